//! Chat templates: the model's own Jinja template (GGUF `tokenizer.chat_template`, HF
//! `tokenizer_config.json`'s `chat_template`) rendered the way transformers'
//! `apply_chat_template` renders it: `trim_blocks` and `lstrip_blocks` on, `raise_exception`
//! defined, Python's string and dict methods available (`.strip()`, `.startswith()`,
//! `.items()`), the tokenizer's special tokens as variables.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A model's chat template with the special tokens it may print.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    /// The conversation as the text the model was trained on; with `add_generation_prompt`,
    /// ending where the assistant's reply starts.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        let bad = |e: Error| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            ModelError::InvalidInput(format!("the model's chat template failed: {text}"))
        };
        env.add_template("chat", &self.source).map_err(bad)?;
        let template = env.get_template("chat").map_err(bad)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate {
            source: source.into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        }
    }

    /// A Llama-2-style template: `raise_exception`, `loop.index0`, `.strip()`, and the block
    /// whitespace rules (expected text from transformers 5.x's renderer on the same input).
    #[test]
    fn python_methods_block_trimming_and_exceptions() {
        let t = template(
            "{% for message in messages %}\n\
             {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n\
             {{ raise_exception('Conversation roles must alternate user/assistant') }}\n\
             {% endif %}\n\
             {% if message['role'] == 'user' %}\n\
             {{ bos_token + '[INST] ' + message['content'].strip() + ' [/INST]' }}\n\
             {% else %}\n\
             {{ ' ' + message['content'].strip() + ' ' + eos_token }}\n\
             {% endif %}\n\
             {% endfor %}",
        );
        let text = t
            .render(
                &[
                    Message::new("user", "  Hi there "),
                    Message::new("assistant", "Hello."),
                    Message::new("user", "Bye"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            text,
            "<s>[INST] Hi there [/INST]\n Hello. </s>\n<s>[INST] Bye [/INST]\n"
        );
        let err = t
            .render(&[Message::new("assistant", "first")], false)
            .unwrap_err();
        assert!(err.to_string().contains("must alternate"), "{err}");
        assert!(template("{% if %}").render(&[], true).is_err());
    }
}
