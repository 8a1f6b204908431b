//! Deterministic mutation testing of every reader of files a user hands us: a model folder
//! (config.json, safetensors, tokenizer.json), a GGUF, an SAE folder (cfg.json, safetensors), a
//! Gemma Scope params.npz and a session file. Each seed takes a real file and truncates it,
//! flips bytes, or writes huge or zero lengths into its header; the reader must answer with an
//! error or a value, never a panic (an abort from a huge allocation kills the test, which
//! fails it too). The seeds are fixed, so a failure reproduces: rerun with
//! `MUTATION_SEED=<n>` to try one.

mod common;

use std::path::{Path, PathBuf};

use common::{fixtures, real_model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Seeds per reader (a few hundred in all).
const SEEDS: u64 = 60;

/// One way of damaging a file.
#[derive(Debug)]
enum Mutation {
    Truncate(usize),
    Flip(Vec<(usize, u8)>),
    /// Write `value` (little-endian, `width` bytes) at `offset` in the first KiBs, where
    /// headers keep their lengths and counts.
    Overwrite {
        offset: usize,
        width: usize,
        value: u64,
    },
}

fn mutation(rng: &mut StdRng, len: usize) -> Mutation {
    let header = len.clamp(1, 4096);
    match rng.random_range(0..3) {
        0 => Mutation::Truncate(rng.random_range(0..len.max(1))),
        1 => Mutation::Flip(
            (0..rng.random_range(1..8))
                .map(|_| {
                    // Mostly in the header, where a flipped byte changes what is read next.
                    let at = if rng.random_bool(0.7) {
                        rng.random_range(0..header)
                    } else {
                        rng.random_range(0..len.max(1))
                    };
                    (at, 1u8 << rng.random_range(0..8))
                })
                .collect(),
        ),
        _ => {
            let width = [2, 4, 8][rng.random_range(0..3)];
            let value = [
                0,
                1,
                u64::MAX,
                u64::MAX / 2,
                1 << 40,
                u32::MAX as u64,
                i32::MAX as u64,
                0x8000_0000,
            ][rng.random_range(0..8)];
            Mutation::Overwrite {
                offset: rng.random_range(0..header),
                width,
                value,
            }
        }
    }
}

fn apply(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match m {
        Mutation::Truncate(n) => out.truncate(*n),
        Mutation::Flip(flips) => {
            for &(at, bit) in flips {
                if let Some(b) = out.get_mut(at) {
                    *b ^= bit;
                }
            }
        }
        Mutation::Overwrite {
            offset,
            width,
            value,
        } => {
            for (i, byte) in value.to_le_bytes().into_iter().take(*width).enumerate() {
                if let Some(b) = out.get_mut(offset + i) {
                    *b = byte;
                }
            }
        }
    }
    out
}

/// Copies `dir` (flat) into a fresh temporary folder.
fn copy_dir(dir: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    tmp
}

/// Runs `read` on `SEEDS` mutations of `file` (inside a copy of its folder, so that its
/// siblings are there) and returns the seeds that panicked, with what they did.
fn mutate_and_read(
    name: &str,
    file: &Path,
    whole_dir: bool,
    read: impl Fn(&Path) -> bool,
) -> (usize, Vec<String>) {
    let original = std::fs::read(file).unwrap();
    let file_name = file.file_name().unwrap();
    let seeds: Vec<u64> = match std::env::var("MUTATION_SEED") {
        Ok(s) => vec![s.parse().expect("MUTATION_SEED is a number")],
        Err(_) => (0..SEEDS).collect(),
    };
    let tmp = if whole_dir {
        copy_dir(file.parent().unwrap())
    } else {
        tempfile::tempdir().unwrap()
    };
    std::fs::write(tmp.path().join(file_name), &original).unwrap();
    let whole = if whole_dir {
        tmp.path().to_path_buf()
    } else {
        tmp.path().join(file_name)
    };
    assert!(read(&whole), "{name}: the undamaged file does not read");
    let mut panics = Vec::new();
    for &seed in &seeds {
        let mut rng = StdRng::seed_from_u64(seed ^ fxhash(name));
        let m = mutation(&mut rng, original.len());
        let tmp = if whole_dir {
            copy_dir(file.parent().unwrap())
        } else {
            tempfile::tempdir().unwrap()
        };
        let target: PathBuf = tmp.path().join(file_name);
        std::fs::write(&target, apply(&original, &m)).unwrap();
        let opened = if whole_dir {
            tmp.path().to_path_buf()
        } else {
            target.clone()
        };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&opened))).is_err() {
            panics.push(format!("{name} seed {seed}: {m:?}"));
        }
    }
    (seeds.len(), panics)
}

/// A stable hash of a reader's name, so each reader gets its own mutations.
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn damaged_files_are_errors_never_panics() {
    // The panic messages of the seeds that fail are the report; the others stay quiet.
    let gpt2 = fixtures().join("tiny/gpt2");
    let model = |p: &Path| dendrite::model::open(p).is_ok();
    let sae = |p: &Path| dendrite::sae::open(p).is_ok();
    let session = |p: &Path| dendrite::ui::session::read(p).is_ok();
    // A GGUF cut to its first 2 MB: the whole header (vocabulary included) and the first
    // tensors, so damage to lengths, counts, offsets and alignment is all reachable.
    let gguf_dir = tempfile::tempdir().unwrap();
    let gguf = gguf_dir.path().join("smol.gguf");
    let smol = std::fs::read(real_model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    std::fs::write(&gguf, &smol[..2 << 20]).unwrap();
    let session_dir = tempfile::tempdir().unwrap();
    let session_file = session_dir.path().join("s.dendrite");
    std::fs::write(
        &session_file,
        include_str!("fixtures/session/three_interventions.dendrite"),
    )
    .unwrap();

    let runs = [
        mutate_and_read("config.json", &gpt2.join("config.json"), true, model),
        mutate_and_read("safetensors", &gpt2.join("model.safetensors"), true, model),
        mutate_and_read("tokenizer.json", &gpt2.join("tokenizer.json"), true, model),
        // Cut short, it never opens whole: any answer but a panic will do.
        mutate_and_read("gguf", &gguf, false, |p: &Path| {
            let _ = dendrite::model::open(p);
            true
        }),
        mutate_and_read(
            "sae cfg.json",
            &fixtures().join("sae/topk/cfg.json"),
            true,
            sae,
        ),
        mutate_and_read(
            "sae safetensors",
            &fixtures().join("sae/topk/sae_weights.safetensors"),
            true,
            sae,
        ),
        mutate_and_read(
            "npz",
            &fixtures().join("sae/gemma_scope/params.npz"),
            false,
            |p: &Path| dendrite::sae::open_with_hook(p, Some("blocks.0.hook_resid_post")).is_ok(),
        ),
        mutate_and_read("session", &session_file, false, session),
    ];
    let tried: usize = runs.iter().map(|(n, _)| n).sum();
    let panics: Vec<&String> = runs.iter().flat_map(|(_, p)| p).collect();
    assert!(
        panics.is_empty(),
        "{} of {tried} damaged files panicked:\n{}",
        panics.len(),
        panics
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
