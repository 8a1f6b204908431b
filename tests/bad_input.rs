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

fn tokenizer_err(path: &Path) -> ModelError {
    match model::open_tokenizer(path) {
        Ok(_) => panic!("{} gave a tokenizer but should not have", path.display()),
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

/// A copy of `tests/fixtures/sae/gemma_scope/params.npz` whose `W_enc.npy` header says
/// `shape` (the same number of characters, so the zip stays consistent).
fn npz_with_w_enc_shape(dir: &Path, shape: &str) -> PathBuf {
    use std::io::{Read, Write};
    let src = fixtures().join("sae/gemma_scope/params.npz");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&src).unwrap()).unwrap();
    let out = dir.join("params.npz");
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&out).unwrap());
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name == "W_enc.npy" {
            // The header (after the 10-byte prefix) is padded with spaces to 118 bytes: patch
            // the shape and keep its length with the padding.
            let text = String::from_utf8_lossy(&bytes[10..128]).into_owned();
            let patched = text.replace("(32, 64)", shape);
            let (dict, _) = patched.split_at(patched.rfind('}').unwrap() + 1);
            let padded = format!("{dict:<117}\n");
            assert_eq!(padded.len(), text.len(), "keep the header's length");
            bytes[10..128].copy_from_slice(padded.as_bytes());
        }
        writer
            .start_file(
                name,
                zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Stored),
            )
            .unwrap();
        writer.write_all(&bytes).unwrap();
    }
    writer.finish().unwrap();
    out
}

#[test]
fn an_npz_whose_header_lies_about_its_shape_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    // Shapes whose size the entry does not hold are refused from the header alone; a shape
    // of the same size but the wrong way round is caught by the arrays that do not fit it.
    for (shape, expected) in [
        ("(1099511627776, 1)", "W_enc.npy: its header says"),
        ("(99999999,)", "W_enc.npy: its header says"),
        ("(32, 65)", "W_enc.npy: its header says"),
        ("(0, 64)", "W_enc.npy: its header says"),
        ("(64, 32)", "has shape [64], expected [32]"),
    ] {
        let npz = npz_with_w_enc_shape(tmp.path(), shape);
        let e = dendrite::sae::open_with_hook(&npz, Some("blocks.0.hook_resid_post"))
            .err()
            .unwrap_or_else(|| panic!("{shape}: opened"));
        let message = format!("{e:#}");
        assert!(message.contains(expected), "{shape}: {message}");
    }
}

/// The topk SAE fixture with `cfg.json`'s `field` set to `value`.
fn sae_with_cfg(field: &str, value: serde_json::Value) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("sae/topk");
    for name in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(src.join(name), tmp.path().join(name)).unwrap();
    }
    let path = tmp.path().join("cfg.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[field] = value;
    std::fs::write(&path, cfg.to_string()).unwrap();
    tmp
}

#[test]
fn an_sae_config_with_zero_or_absurd_sizes_is_refused() {
    for (field, value) in [
        ("d_sae", serde_json::json!(0)),
        ("d_in", serde_json::json!(0)),
        ("d_sae", serde_json::json!(1u64 << 40)),
        ("d_in", serde_json::json!(u64::MAX)),
        ("k", serde_json::json!(0)),
        ("k", serde_json::json!(1000)),
    ] {
        let dir = sae_with_cfg(field, value.clone());
        let e = dendrite::sae::open(dir.path())
            .err()
            .unwrap_or_else(|| panic!("{field} = {value}: opened"));
        let message = format!("{e:#}");
        assert!(message.contains(field), "{field} = {value}: {message}");
    }
}

/// A vocabulary-only GGUF with `extra` metadata replacing or adding entries.
fn gguf_with(path: &Path, extra: &[(&str, Value)], token_types: usize) {
    let tokens = Value::Array(
        ["h", "i", "Ġ", "hi", "Ġhi"]
            .iter()
            .map(|s| Value::String(s.to_string()))
            .collect(),
    );
    let merges = Value::Array(vec![
        Value::String("h i".into()),
        Value::String("Ġ hi".into()),
    ]);
    let types = Value::Array(vec![Value::I32(1); token_types]);
    let arch = Value::String("llama".into());
    let model = Value::String("gpt2".into());
    let mut metadata: Vec<(&str, &Value)> = vec![
        ("general.architecture", &arch),
        ("tokenizer.ggml.model", &model),
        ("tokenizer.ggml.tokens", &tokens),
        ("tokenizer.ggml.token_type", &types),
        ("tokenizer.ggml.merges", &merges),
    ];
    for (k, v) in extra {
        metadata.retain(|(key, _)| key != k);
        metadata.push((k, v));
    }
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &[]).unwrap();
}

#[test]
fn a_gguf_with_zero_alignment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("zero.gguf");
    gguf_with(&path, &[("general.alignment", Value::U32(0))], 5);
    let e = open_err(&path);
    assert!(e.to_string().contains("alignment"), "{e}");
    let e = tokenizer_err(&path);
    assert!(e.to_string().contains("alignment"), "{e}");
}

#[test]
fn a_gguf_vocabulary_that_does_not_add_up_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("vocab.gguf");
    // Three token types for five tokens.
    gguf_with(&path, &[], 3);
    let e = tokenizer_err(&path);
    assert!(e.to_string().contains("token_type"), "{e}");
    // A BOS id beyond the vocabulary.
    gguf_with(&path, &[("tokenizer.ggml.bos_token_id", Value::U32(99))], 5);
    let e = tokenizer_err(&path);
    assert!(e.to_string().contains("bos"), "{e}");
}
