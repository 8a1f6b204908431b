//! Tokenizers: HF `tokenizer.json`, or rebuilt from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! The GGUF path mirrors what HF transformers builds from the same file
//! (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`), so token ids agree with the
//! reference: byte-level BPE for `tokenizer.ggml.model = gpt2`, and for Gemma's SentencePiece
//! vocabulary a byte-fallback BPE whose merges are recovered from the vocabulary order.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
};

use super::error::{ModelError, Result};
use super::gguf::{metadata_str, metadata_string_array, metadata_u32};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

#[derive(Clone)]
pub struct Tokenizer {
    /// Shared: a model's copies (a pruned one per slider move) clone the tokenizer, and a
    /// whole vocabulary's maps took milliseconds to copy.
    inner: std::sync::Arc<tokenizers::Tokenizer>,
    special_ids: HashSet<u32>,
    path: PathBuf,
    /// The model's beginning-of-sequence token, when it has one.
    bos_id: Option<u32>,
    /// Whether HF's tokenizer puts the BOS before plain text (`add_bos_token`): Gemma yes,
    /// GPT-2 and SmolLM2 no.
    adds_bos: bool,
    /// The model's Jinja chat template, when it ships one.
    chat_template: Option<String>,
}

/// Whether text gets the model's BOS token before it (`--bos`, the prompt bar's toggle).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum BosMode {
    /// Exactly when HF's tokenizer adds one (`add_bos_token`).
    #[default]
    Auto,
    Yes,
    No,
}

impl std::str::FromStr for BosMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(BosMode::Auto),
            "yes" => Ok(BosMode::Yes),
            "no" => Ok(BosMode::No),
            other => Err(format!("\"{other}\": expected auto, yes or no")),
        }
    }
}

impl std::fmt::Display for BosMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BosMode::Auto => "auto",
            BosMode::Yes => "yes",
            BosMode::No => "no",
        })
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Reads an HF `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| ModelError::Tokenizer {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let mut tokenizer = Self::new(inner, path);
        // A BOS the post-processor puts before plain text is the model's BOS.
        if let Ok(prefix) = tokenizer.inner.encode("", true) {
            let first = prefix.get_ids().first().copied();
            if let Some(id) = first.filter(|id| tokenizer.special_ids.contains(id)) {
                tokenizer.bos_id = Some(id);
                tokenizer.adds_bos = true;
            }
        }
        if let Some(dir) = path.parent() {
            tokenizer.apply_hf_config(&dir.join("tokenizer_config.json"))?;
        }
        Ok(tokenizer)
    }

    /// `tokenizer_config.json`'s `bos_token` and `add_bos_token`, which transformers applies
    /// over `tokenizer.json` when it loads the tokenizer.
    fn apply_hf_config(&mut self, path: &Path) -> Result<()> {
        if !path.exists() {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Tokenizer {
                path: path.to_path_buf(),
                reason: format!("not valid JSON: {e}"),
            })?;
        let bos_text = match config.get("bos_token") {
            Some(serde_json::Value::String(s)) => Some(s.as_str()),
            Some(v) => v.get("content").and_then(|c| c.as_str()),
            None => None,
        };
        if let Some(id) = bos_text.and_then(|t| self.inner.token_to_id(t)) {
            self.bos_id = Some(id);
        }
        // A string, or a list of named templates of which transformers uses "default".
        self.chat_template = match config.get("chat_template") {
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        };
        if let Some(add) = config.get("add_bos_token").and_then(|v| v.as_bool()) {
            if add && self.bos_id.is_none() {
                return Err(ModelError::Tokenizer {
                    path: path.to_path_buf(),
                    reason: "add_bos_token is true but there is no bos_token in the vocabulary"
                        .into(),
                });
            }
            self.adds_bos = add;
        }
        Ok(())
    }

    fn new(inner: tokenizers::Tokenizer, path: &Path) -> Self {
        let special_ids = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        Tokenizer {
            inner: std::sync::Arc::new(inner),
            special_ids,
            path: path.to_path_buf(),
            bos_id: None,
            adds_bos: false,
            chat_template: None,
        }
    }

    /// Rebuilds the tokenizer a GGUF file describes.
    pub fn from_gguf(path: &Path, content: &gguf_file::Content) -> Result<Self> {
        let err = |reason: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let md = &content.metadata;
        let model = metadata_str(md, "tokenizer.ggml.model").ok_or_else(|| {
            ModelError::MissingTokenizer {
                path: path.to_path_buf(),
                reason: "GGUF file has no tokenizer.ggml.model metadata".into(),
            }
        })?;
        let architecture = metadata_str(md, "general.architecture").unwrap_or_default();
        let tokens = metadata_string_array(md, "tokenizer.ggml.tokens")
            .ok_or_else(|| err("tokenizer.ggml.tokens is missing or not a string array".into()))?;
        let token_types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(gguf_file::Value::Array(values)) => values
                .iter()
                .map(|v| v.to_i32().map_err(|e| err(format!("token_type: {e}"))))
                .collect::<Result<_>>()?,
            _ => Vec::new(),
        };
        if !token_types.is_empty() && token_types.len() != tokens.len() {
            return Err(err(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens in tokenizer.ggml.tokens",
                token_types.len(),
                tokens.len()
            )));
        }
        // A special token's id beyond the vocabulary would be dropped without a word.
        for key in [
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id",
        ] {
            if let Some(value) = md.get(key) {
                let id = metadata_u32(md, key)
                    .ok_or_else(|| err(format!("{key} is not a token id ({value:?})")))?;
                if id as usize >= tokens.len() {
                    return Err(err(format!(
                        "{key} = {id} is beyond the vocabulary of {} tokens",
                        tokens.len()
                    )));
                }
            }
        }
        let merges_in_file = metadata_string_array(md, "tokenizer.ggml.merges");
        let special_name =
            |key: &str| metadata_u32(md, key).and_then(|id| tokens.get(id as usize).cloned());
        let add_bos = match md.get("tokenizer.ggml.add_bos_token") {
            Some(v) => v.to_bool().unwrap_or(false),
            // llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise.
            None => model == "llama",
        };

        let (mut inner, vocab_spelling) = match model.as_str() {
            "gpt2" => byte_level_bpe(&tokens, merges_in_file.as_deref()).map_err(err)?,
            "llama" if architecture.starts_with("gemma") => {
                gemma_sentencepiece_bpe(&tokens, special_name("tokenizer.ggml.unknown_token_id"))
                    .map_err(err)?
            }
            other => {
                return Err(ModelError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!(
                        "GGUF tokenizer model \"{other}\" for architecture \"{architecture}\" \
                         (supported: gpt2 byte-level BPE, gemma sentencepiece)"
                    ),
                });
            }
        };

        // Control tokens become special tokens; user-defined ones plain added tokens, so that
        // both stay whole instead of being cut into pieces.
        let byte_alphabet: HashSet<char> = byte_to_unicode().into_iter().collect();
        let control: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(token, ty)| {
                **ty == TOKEN_TYPE_CONTROL
                    && (model != "gpt2" || token.chars().all(|c| byte_alphabet.contains(&c)))
            })
            .map(|(token, _)| AddedToken::from(token.clone(), true).normalized(false))
            .collect();
        inner.add_special_tokens(&control);
        let user_defined: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(token, ty)| {
                **ty == TOKEN_TYPE_USER_DEFINED && vocab_spelling.contains(*token)
            })
            .map(|(token, _)| AddedToken::from(token.clone(), false).normalized(false))
            .collect();
        inner.add_tokens(&user_defined);

        if let Some(split) = metadata_str(md, "tokenizer.ggml.pre").and_then(|p| split_regex(&p)) {
            let pre = json_component::<PreTokenizerWrapper>(serde_json::json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
                ]
            }))
            .map_err(err)?;
            inner.with_pre_tokenizer(Some(pre));
        }
        let bos_name = special_name("tokenizer.ggml.bos_token_id");
        let bos_id = bos_name.as_ref().and_then(|b| inner.token_to_id(b));
        if add_bos && bos_id.is_none() {
            return Err(err(
                "tokenizer.ggml.add_bos_token is set but tokenizer.ggml.bos_token_id names no token \
                 of the vocabulary"
                    .into(),
            ));
        }
        if let Some((bos, bos_id)) = bos_name.zip(bos_id).filter(|_| add_bos) {
            let post = json_component::<PostProcessorWrapper>(serde_json::json!({
                    "type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {bos.clone(): {"id": bos, "ids": [bos_id], "tokens": [bos]}}
                }))
                .map_err(err)?;
            inner.with_post_processor(Some(post));
        }
        let mut tokenizer = Self::new(inner, path);
        tokenizer.bos_id = bos_id;
        tokenizer.adds_bos = add_bos;
        tokenizer.chat_template = metadata_str(md, "tokenizer.chat_template");
        Ok(tokenizer)
    }

    /// The model's Jinja chat template, when it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// A token's vocabulary entry (`<|im_end|>`, `Ġthe`), not its decoded text.
    pub fn token_name(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The model's BOS token id, if it has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether HF's tokenizer adds the BOS to plain text.
    pub fn adds_bos(&self) -> bool {
        self.adds_bos
    }

    /// Whether `mode` puts a BOS before text for this tokenizer; `Yes` for a vocabulary without
    /// one is an error.
    pub fn wants_bos(&self, mode: BosMode) -> Result<bool> {
        match mode {
            BosMode::Auto => Ok(self.adds_bos),
            BosMode::No => Ok(false),
            BosMode::Yes if self.bos_id.is_some() => Ok(true),
            BosMode::Yes => Err(ModelError::InvalidInput(
                "this model's tokenizer has no BOS token (use --bos auto or no)".into(),
            )),
        }
    }

    /// What goes before every text under `mode`: `[bos]` or nothing.
    pub fn bos_prefix(&self, mode: BosMode) -> Result<Vec<u32>> {
        Ok(match (self.wants_bos(mode)?, self.bos_id) {
            (true, Some(bos)) => vec![bos],
            _ => Vec::new(),
        })
    }

    /// A prompt's token ids: the text without special tokens, after the BOS `mode` asks for.
    /// `BosMode::Auto` gives exactly HF's `tokenizer(text)["input_ids"]` for these tokenizers.
    pub fn encode_prompt(&self, text: &str, mode: BosMode) -> Result<Vec<u32>> {
        let mut ids = self.bos_prefix(mode)?;
        ids.extend(self.encode(text, false)?);
        Ok(ids)
    }

    /// Token ids of `text`; special tokens (e.g. BOS) are added only when `add_special` is set.
    /// Special-token text in the input (like `<|im_start|>`) is always matched whole.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The vocabulary entry of each id, as HF's `convert_ids_to_tokens` spells it.
    pub fn token_strings(&self, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| {
                self.inner
                    .id_to_token(id)
                    .unwrap_or_else(|| format!("<{id}>"))
            })
            .collect()
    }

    /// The text a single token stands for (decoded, as a user reads it). A token that is only
    /// part of a character's UTF-8 bytes shows those bytes as `<0xE2>` escapes rather than a
    /// replacement character (a box in most fonts).
    pub fn token_text(&self, id: u32) -> String {
        let text = self
            .inner
            .decode(&[id], false)
            .unwrap_or_else(|_| format!("<{id}>"));
        if !text.contains('\u{FFFD}') {
            // Control characters (other than whitespace) have no glyph in any font.
            if text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
            {
                return escape_partial_utf8_or_controls(text.as_bytes());
            }
            return text;
        }
        let Some(token) = self.inner.id_to_token(id) else {
            return text;
        };
        // Sentencepiece byte fallback tokens are spelled <0xE2> already.
        if token.len() == 6 && token.starts_with("<0x") && token.ends_with('>') {
            return token;
        }
        // Byte-level BPE spells each byte with one character of GPT-2's alphabet.
        let alphabet = byte_to_unicode();
        let bytes: Option<Vec<u8>> = token
            .chars()
            .map(|c| alphabet.iter().position(|&a| a == c).map(|b| b as u8))
            .collect();
        match bytes {
            Some(bytes) => escape_partial_utf8(&bytes),
            None => text,
        }
    }

    /// The texts of the alternatives `(id, logprob)` a generation step reports, in order.
    pub fn alternative_texts(&self, top: &[(u32, f32)]) -> Vec<String> {
        top.iter().map(|&(id, _)| self.token_text(id)).collect()
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// How many of `ids` lead with special tokens (a BOS): the positions before the text that
    /// per-token analyses do not score.
    pub fn first_scored(&self, ids: &[u32]) -> usize {
        ids.iter().take_while(|&&id| self.is_special(id)).count()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

fn json_component<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> std::result::Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("building tokenizer component: {e}"))
}

/// `bytes` as text, with each byte that is not part of a whole UTF-8 character as `<0xNN>`.
fn escape_partial_utf8(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("<0x{b:02X}>"));
        }
    }
    out
}

/// [`escape_partial_utf8`], with control characters (other than whitespace) escaped too, by
/// their UTF-8 bytes.
fn escape_partial_utf8_or_controls(bytes: &[u8]) -> String {
    let mut out = String::new();
    for c in escape_partial_utf8(bytes).chars() {
        if c.is_control() && !matches!(c, '\n' | '\t' | '\r') {
            for b in c.to_string().bytes() {
                out.push_str(&format!("<0x{b:02X}>"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// GPT-2's reversible map from bytes to printable characters.
fn byte_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut map = vec!['\0'; 256];
    for &b in &printable {
        map[b as usize] = char::from_u32(b).unwrap_or('?');
    }
    let mut next = 0u32;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = char::from_u32(256 + next).unwrap_or('?');
            next += 1;
            printable.push(b);
        }
    }
    map
}

type Built = (tokenizers::Tokenizer, HashSet<String>);

/// `tokenizer.ggml.model = gpt2`: byte-level BPE, as HF's `GPT2Tokenizer`.
fn byte_level_bpe(
    tokens: &[String],
    merges: Option<&[String]>,
) -> std::result::Result<Built, String> {
    let spelling = byte_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (index, token) in tokens.iter().enumerate() {
        let spelled = if token.chars().all(|c| alphabet.contains(&c)) {
            token.clone()
        } else {
            token.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(spelled, index as u32);
    }
    let merges: Vec<(String, String)> = match merges {
        Some(merges) => merges
            .iter()
            .map(|m| {
                let mut parts = m.splitn(2, ' ');
                let left = parts.next().unwrap_or_default().to_string();
                let right = parts.next().unwrap_or_default().to_string();
                (left, right)
            })
            .collect(),
        None => return Err("byte-level BPE vocabulary without tokenizer.ggml.merges".into()),
    };
    let spelled_vocab: HashSet<String> = vocab.keys().cloned().collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| format!("building BPE: {e}"))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(json_component::<PreTokenizerWrapper>(
        serde_json::json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
        }),
    )?));
    inner.with_decoder(Some(json_component::<DecoderWrapper>(serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true
    }))?));
    Ok((inner, spelled_vocab))
}

/// Gemma's SentencePiece vocabulary as HF's `GemmaTokenizer` (byte-fallback BPE). The file has
/// no merges: they are recovered from the vocabulary, ranked by the order tokens appear in the
/// file (Gemma's scores do not follow its merge order). Tokens made only of spaces are stored
/// with real spaces and are respelled with `▁` first, as transformers does.
fn gemma_sentencepiece_bpe(
    tokens: &[String],
    unk: Option<String>,
) -> std::result::Result<Built, String> {
    let respelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    // Later duplicates win, as in a Python dict comprehension.
    let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(respelled.len());
    for (index, token) in respelled.iter().enumerate() {
        vocab.insert(token.as_str(), index as u32);
    }
    let merges = merges_from_vocab_order(&vocab);
    let spelled_vocab: HashSet<String> = vocab.keys().map(|s| s.to_string()).collect();
    let owned_vocab: Vocab = vocab.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(owned_vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(|e| format!("building BPE: {e}"))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_normalizer(Some(json_component::<NormalizerWrapper>(
        serde_json::json!({
            "type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"
        }),
    )?));
    inner.with_pre_tokenizer(Some(json_component::<PreTokenizerWrapper>(serde_json::json!({
        "type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false
    }))?));
    inner.with_decoder(Some(json_component::<DecoderWrapper>(serde_json::json!({
        "type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"}
        ]
    }))?));
    Ok((inner, spelled_vocab))
}

/// transformers' `generate_merges(vocab, vocab_scores=-position)`: every split of every token
/// whose two halves are both tokens, ranked by the token's position (earlier first), then by the
/// longer left half, then the longer right half.
fn merges_from_vocab_order(vocab: &HashMap<&str, u32>) -> Vec<(String, String)> {
    let mut by_position: Vec<(&str, u32)> = vocab.iter().map(|(k, v)| (*k, *v)).collect();
    by_position.sort_by_key(|&(_, index)| index);
    // (position of merged token, left len, right len, left id, right id, left, right)
    let mut merges: Vec<(u32, usize, usize, u32, u32, &str, &str)> = Vec::new();
    for &(token, position) in &by_position {
        for (split, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                merges.push((
                    position,
                    left.chars().count(),
                    right.chars().count(),
                    l,
                    r,
                    left,
                    right,
                ));
            }
        }
    }
    // Python sorts each token's candidates by (id left, id right), then the whole list stably by
    // (score, len left, len right) descending; score = -position.
    merges.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then(b.2.cmp(&a.2))
            .then(a.3.cmp(&b.3))
            .then(a.4.cmp(&b.4))
    });
    merges
        .into_iter()
        .map(|m| (m.5.to_string(), m.6.to_string()))
        .collect()
}

/// Split regexes for `tokenizer.ggml.pre` values whose BPE merges were learned on a split other
/// than GPT-2's (the same table transformers uses).
fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_utf8_tokens_show_their_bytes() {
        assert_eq!(escape_partial_utf8("é".as_bytes()), "é");
        assert_eq!(escape_partial_utf8(&[0xE2, 0x80]), "<0xE2><0x80>");
        assert_eq!(escape_partial_utf8(&[b'a', 0xE2]), "a<0xE2>");
        assert_eq!(escape_partial_utf8_or_controls(b"a\x07\n"), "a<0x07>\n");
        assert_eq!(
            escape_partial_utf8_or_controls("\u{85}".as_bytes()),
            "<0xC2><0x85>"
        );
        // The tiny GPT-2's byte-level vocabulary: "â" is the byte 0xE2 on its own.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/gpt2");
        let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let id = tok
            .token_to_id("â")
            .expect("the fixture has the byte token â");
        assert_eq!(tok.token_text(id), "<0xE2>");
    }

    #[test]
    fn byte_map_is_gpt2s() {
        let map = byte_to_unicode();
        assert_eq!(map[b' ' as usize], 'Ġ');
        assert_eq!(map[b'\n' as usize], 'Ċ');
        assert_eq!(map[b'A' as usize], 'A');
        let distinct: HashSet<char> = map.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn merges_follow_vocabulary_order_then_longer_left() {
        let vocab: HashMap<&str, u32> = [("a", 0), ("b", 1), ("ab", 2), ("abb", 3), ("bb", 4)]
            .into_iter()
            .collect();
        let merges = merges_from_vocab_order(&vocab);
        let as_str: Vec<(&str, &str)> = merges
            .iter()
            .map(|(l, r)| (l.as_str(), r.as_str()))
            .collect();
        // "ab" (position 2) first; "abb" (3) splits as "ab"+"b" (longer left) before "a"+"bb".
        assert_eq!(
            as_str,
            vec![("a", "b"), ("ab", "b"), ("a", "bb"), ("b", "b")]
        );
    }
}
