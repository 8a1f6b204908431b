//! Bad files and bad requests give typed errors that name the file and the reason — never a
//! panic.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use common::{fixtures, real_model};
use dendrite::model::{self, HookSpec, Intervention, ModelError, NoObserver, ValueOp};

fn copy_fixture(arch: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("tiny").join(arch)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

fn open_err(path: &Path) -> ModelError {
    match model::open(path) {
        Ok(_) => panic!("{} opened but should not have", path.display()),
        Err(e) => e,
    }
}

fn truncate(path: &Path, len: usize) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..len.min(bytes.len())]).unwrap();
}

#[test]
fn missing_path() {
    let e = open_err(Path::new("/no/such/model"));
    assert!(matches!(e, ModelError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("/no/such/model"));
}

#[test]
fn truncated_safetensors() {
    let dir = copy_fixture("llama");
    let weights = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len() as usize;
    truncate(&weights, len / 2);
    let e = open_err(dir.path());
    assert!(matches!(e, ModelError::CorruptSafetensors { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn garbage_safetensors_header() {
    let dir = copy_fixture("gpt2");
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header",
    )
    .unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, ModelError::CorruptSafetensors { .. }), "{e}");
}

#[test]
fn invalid_config_json() {
    let dir = copy_fixture("gpt2");
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, ModelError::InvalidConfig { .. }), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");

    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "gpt2", "n_embd": "wide"}"#,
    )
    .unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, ModelError::InvalidConfig { .. }), "{e}");
}

#[test]
fn unknown_model_type() {
    let dir = copy_fixture("gpt2");
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    let e = open_err(dir.path());
    assert!(
        matches!(&e, ModelError::UnknownArchitecture { model_type, .. } if model_type == "mamba"),
        "{e}"
    );
}

#[test]
fn missing_tokenizer() {
    let dir = copy_fixture("qwen2");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, ModelError::MissingTokenizer { .. }), "{e}");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
}

#[test]
fn tensor_shape_mismatch() {
    let dir = copy_fixture("llama");
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["intermediate_size"] = 64.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let e = open_err(dir.path());
    match &e {
        ModelError::ShapeMismatch {
            name,
            expected,
            found,
            ..
        } => {
            assert!(name.contains("mlp"), "{e}");
            assert_ne!(expected, found);
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
}

#[test]
fn pickle_is_refused() {
    let dir = copy_fixture("gpt2");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("pytorch_model.bin"),
        b"\x80\x02cos\nsystem\n",
    )
    .unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, ModelError::PickleRefused { .. }), "{e}");
    let e = open_err(&dir.path().join("pytorch_model.bin"));
    assert!(matches!(e, ModelError::PickleRefused { .. }), "{e}");
}

fn temp_copy_prefix(src: &Path, len: usize) -> (tempfile::TempDir, PathBuf) {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("cut.gguf");
    let mut prefix = Vec::with_capacity(len);
    std::fs::File::open(src)
        .unwrap()
        .take(len as u64)
        .read_to_end(&mut prefix)
        .unwrap();
    std::fs::write(&dst, prefix).unwrap();
    (tmp, dst)
}

#[test]
fn truncated_gguf() {
    let smol = real_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    // Cut inside the metadata (the vocabulary alone is over 1 MB) ...
    let (_tmp, cut) = temp_copy_prefix(&smol, 200_000);
    let e = open_err(&cut);
    assert!(matches!(e, ModelError::CorruptGguf { .. }), "{e}");
    assert!(e.to_string().contains("cut.gguf"), "{e}");
    // ... and inside the tensor data.
    let (_tmp, cut) = temp_copy_prefix(&smol, 40_000_000);
    let e = open_err(&cut);
    assert!(matches!(e, ModelError::CorruptGguf { .. }), "{e}");
}

#[test]
fn garbage_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("junk.gguf");
    std::fs::write(
        &path,
        b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    )
    .unwrap();
    let e = open_err(&path);
    assert!(matches!(e, ModelError::CorruptGguf { .. }), "{e}");
    std::fs::write(&path, b"not a gguf at all").unwrap();
    let e = open_err(&path);
    assert!(matches!(e, ModelError::CorruptGguf { .. }), "{e}");
}

/// A GGUF with a byte-level vocabulary and no tensors.
fn vocabulary_only_gguf(path: &Path) {
    let bytes: Vec<String> = ["h", "i", "Ġ", "hi", "Ġhi"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let tokens = Value::Array(bytes.into_iter().map(Value::String).collect());
    let merges = Value::Array(vec![
        Value::String("h i".into()),
        Value::String("Ġ hi".into()),
    ]);
    let types = Value::Array(vec![Value::I32(1); 5]);
    let arch = Value::String("llama".into());
    let model = Value::String("gpt2".into());
    let metadata: Vec<(&str, &Value)> = vec![
        ("general.architecture", &arch),
        ("tokenizer.ggml.model", &model),
        ("tokenizer.ggml.tokens", &tokens),
        ("tokenizer.ggml.token_type", &types),
        ("tokenizer.ggml.merges", &merges),
    ];
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &[]).unwrap();
}

#[test]
fn vocabulary_only_gguf_opens_as_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("vocab.gguf");
    vocabulary_only_gguf(&path);
    let tokenizer = model::open_tokenizer(&path).unwrap();
    assert_eq!(tokenizer.encode("hi hi", false).unwrap(), vec![3, 4]);
    let e = open_err(&path);
    assert!(e.to_string().contains("only a vocabulary"), "{e}");
}

#[test]
fn bad_requests_are_errors() {
    let model = model::open(fixtures().join("tiny/gpt2")).unwrap();
    let t = &model.transformer;
    let run = |tokens: Vec<Vec<u32>>, spec: HookSpec| {
        t.forward(&tokens, &spec, &mut NoObserver).map(|_| ())
    };
    assert!(matches!(
        run(vec![vec![]], HookSpec::default()),
        Err(ModelError::InvalidInput(_))
    ));
    assert!(matches!(
        run(vec![vec![100_000]], HookSpec::default()),
        Err(ModelError::InvalidInput(_))
    ));
    // The GPT-2 fixture has 64 learned positions.
    assert!(matches!(
        run(vec![vec![1; 65]], HookSpec::default()),
        Err(ModelError::InvalidInput(_))
    ));
    let spec = HookSpec::default().with_intervention(Intervention::neurons(
        "blocks.9.mlp.hook_post",
        vec![0],
        ValueOp::Set(1.0),
    ));
    assert!(matches!(
        run(vec![vec![1, 2]], spec),
        Err(ModelError::UnknownHook(_))
    ));
    let spec = HookSpec::capture(["blocks.*.nothing"]);
    assert!(matches!(
        run(vec![vec![1, 2]], spec),
        Err(ModelError::UnknownHook(_))
    ));
    let spec = HookSpec::default().with_intervention(Intervention::neurons(
        "blocks.0.mlp.hook_post",
        vec![10_000],
        ValueOp::Set(1.0),
    ));
    assert!(matches!(
        run(vec![vec![1, 2]], spec),
        Err(ModelError::InvalidInput(_))
    ));
    let spec = HookSpec::default().with_intervention(
        Intervention::neurons("blocks.0.mlp.hook_post", vec![0], ValueOp::Set(1.0))
            .at_positions(vec![5]),
    );
    assert!(matches!(
        run(vec![vec![1, 2]], spec),
        Err(ModelError::InvalidInput(_))
    ));
}
