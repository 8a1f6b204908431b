//! Importing explanations written elsewhere: Neuronpedia exports (a JSON array or JSONL of
//! `{modelId, layer, index, description, explanationModelName, typeName, …}`, optionally
//! gzipped) and OpenAI automated-interpretability files (`NeuronSimulationResults`: one JSON
//! object per neuron, `{layer}/{neuron}.jsonl` in their dataset), into one source of a store.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::store::{NewExplanation, Store};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Neuronpedia,
    Openai,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "neuronpedia" => Ok(Format::Neuronpedia),
            "openai" => Ok(Format::Openai),
            other => Err(format!("\"{other}\": expected neuronpedia or openai")),
        }
    }
}

/// What an import did (or, when refused, would have done).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ImportReport {
    pub imported: usize,
    /// Records whose unit is beyond the source's width (skipped with `force`).
    pub out_of_range: Vec<u64>,
    /// `modelId`s that do not match the store's model (imported only with `force`).
    pub other_models: Vec<String>,
    /// OpenAI records of another layer than the source's (skipped).
    pub other_layers: usize,
    /// Records without a description (skipped).
    pub empty: usize,
}

impl ImportReport {
    /// One line for a person: how many were imported into `source`, and what was skipped.
    pub fn summary(&self, source: &str) -> String {
        format!(
            "Imported {} explanations into {source}{}",
            self.imported,
            if self.out_of_range.is_empty() {
                String::new()
            } else {
                format!(
                    "; skipped {} beyond the source's width",
                    self.out_of_range.len()
                )
            }
        )
    }
}

/// One explanation as read from a file, before it is checked against the store.
struct Record {
    model_id: Option<String>,
    layer: Option<i64>,
    index: u64,
    description: String,
    explainer_model: Option<String>,
    type_name: Option<String>,
    score: Option<f64>,
    created_at: Option<String>,
}

fn read_maybe_gz(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{} is not a valid gzip file", path.display()))?;
        out
    } else {
        bytes
    };
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => bail!(
            "{} is not UTF-8: invalid byte at offset {}",
            path.display(),
            e.utf8_error().valid_up_to()
        ),
    }
}

/// Bare `NaN`/`Infinity` (Python's json writes them) become `null`, outside strings.
fn nan_to_null(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        let word = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w));
        match word {
            Some(w) => {
                out.push_str("null");
                rest = &rest[w.len()..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// JSON values of a file: one array, or one object per line.
fn json_values(path: &Path, text: &str) -> Result<Vec<serde_json::Value>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let v: serde_json::Value = serde_json::from_str(trimmed)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        return Ok(v.as_array().cloned().unwrap_or_default());
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str(&nan_to_null(l))
                .with_context(|| format!("{}:{}: not a JSON object", path.display(), n + 1))
        })
        .collect()
}

fn string_or_number(v: Option<&serde_json::Value>) -> Option<u64> {
    match v? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn opt_str(v: Option<&serde_json::Value>) -> Option<String> {
    v.and_then(|v| v.as_str())
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

fn neuronpedia_record(path: &Path, n: usize, v: &serde_json::Value) -> Result<Record> {
    let index = string_or_number(v.get("index")).with_context(|| {
        format!(
            "{} record {}: no \"index\" (a number or a numeric string)",
            path.display(),
            n + 1
        )
    })?;
    let layer = v.get("layer").and_then(|l| match l {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok()),
        _ => None,
    });
    Ok(Record {
        model_id: opt_str(v.get("modelId")),
        layer,
        index,
        description: v
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or_default()
            .trim()
            .to_string(),
        explainer_model: opt_str(v.get("explanationModelName")),
        type_name: opt_str(v.get("typeName")),
        score: v
            .get("score")
            .or_else(|| v.get("scoreV1"))
            .and_then(|s| s.as_f64()),
        created_at: opt_str(v.get("createdAt")),
    })
}

fn openai_records(path: &Path, v: &serde_json::Value) -> Result<Vec<Record>> {
    let id = v
        .get("neuron_id")
        .with_context(|| format!("{}: no \"neuron_id\"", path.display()))?;
    let layer = id.get("layer_index").and_then(|l| l.as_i64());
    let index = id
        .get("neuron_index")
        .and_then(|i| i.as_u64())
        .with_context(|| format!("{}: neuron_id has no neuron_index", path.display()))?;
    let list = v
        .get("scored_explanations")
        .and_then(|l| l.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(list
        .iter()
        .map(|e| Record {
            model_id: None,
            layer,
            index,
            description: e
                .get("explanation")
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .trim()
                .to_string(),
            explainer_model: None,
            type_name: Some("simulation".into()),
            score: e
                .get("scored_simulation")
                .and_then(|s| s.get("ev_correlation_score"))
                .and_then(|s| s.as_f64()),
            created_at: None,
        })
        .collect())
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect_files(&e, out)?;
        }
    } else {
        let name = path.to_string_lossy();
        if name.ends_with(".json")
            || name.ends_with(".jsonl")
            || name.ends_with(".gz")
            || out.is_empty()
        {
            out.push(path.to_path_buf());
        }
    }
    Ok(())
}

fn read_records(path: &Path, format: Option<Format>) -> Result<(Format, Vec<Record>)> {
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    let mut files = Vec::new();
    collect_files(path, &mut files)?;
    let mut detected = format;
    let mut records = Vec::new();
    for file in &files {
        let text = read_maybe_gz(file)?;
        for (n, v) in json_values(file, &text)?.iter().enumerate() {
            let kind = match detected {
                Some(f) => f,
                None if v.get("neuron_id").is_some() => Format::Openai,
                None if v.get("description").is_some() => Format::Neuronpedia,
                None => bail!(
                    "{}: neither a Neuronpedia export (modelId, layer, index, description) nor \
                     an OpenAI explanation file (neuron_id, scored_explanations)",
                    file.display()
                ),
            };
            detected = Some(kind);
            match kind {
                Format::Neuronpedia => records.push(neuronpedia_record(file, n, v)?),
                Format::Openai => records.extend(openai_records(file, v)?),
            }
        }
    }
    let format = detected.with_context(|| format!("{} holds no records", path.display()))?;
    Ok((format, records))
}

/// `a` and `b` name the same model when one's letters and digits contain the other's
/// ("smollm2-135m" and "SmolLM2 135M Instruct").
fn same_model(a: &str, b: &str) -> bool {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect()
    };
    let (a, b) = (norm(a), norm(b));
    !a.is_empty() && !b.is_empty() && (a.contains(&b) || b.contains(&a))
}

/// The layer a source's hook belongs to (`blocks.5.…` → 5).
fn source_layer(hook: &str) -> Option<i64> {
    hook.strip_prefix("blocks.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Imports the explanations in `path` (a file or a folder of them) into `source`. Records for
/// units beyond the source's width, or for another model, make it an error unless `force`
/// (then the former are skipped, the latter imported).
pub fn import(
    store: &mut Store,
    path: &Path,
    source: &str,
    format: Option<Format>,
    force: bool,
) -> Result<ImportReport> {
    let info = store.source(source)?;
    let model_name = store.scan()?.map(|s| s.model_name).unwrap_or_default();
    let (format, records) = read_records(path, format)?;
    let mut report = ImportReport::default();
    let layer = source_layer(&info.hook);
    let mut items = Vec::new();
    for r in records {
        if r.description.is_empty() {
            report.empty += 1;
            continue;
        }
        if format == Format::Openai && layer.is_some() && r.layer.is_some() && r.layer != layer {
            report.other_layers += 1;
            continue;
        }
        if let Some(m) = &r.model_id
            && !same_model(m, &model_name)
            && !report.other_models.contains(m)
        {
            report.other_models.push(m.clone());
        }
        if r.index >= info.width as u64 {
            report.out_of_range.push(r.index);
            continue;
        }
        items.push(NewExplanation {
            source: source.to_string(),
            unit: r.index as usize,
            description: r.description,
            origin: match format {
                Format::Neuronpedia => "neuronpedia".into(),
                Format::Openai => "openai".into(),
            },
            file: Some(path.display().to_string()),
            explainer_model: r.explainer_model,
            type_name: r.type_name,
            score: r.score,
            created_at: r.created_at,
        });
    }
    if !force && (!report.out_of_range.is_empty() || !report.other_models.is_empty()) {
        let mut problems = Vec::new();
        if !report.other_models.is_empty() {
            problems.push(format!(
                "it is for model {} but the store is of {model_name}",
                report.other_models.join(", ")
            ));
        }
        if !report.out_of_range.is_empty() {
            let mut shown: Vec<String> = report
                .out_of_range
                .iter()
                .take(5)
                .map(u64::to_string)
                .collect();
            if report.out_of_range.len() > 5 {
                shown.push("…".into());
            }
            problems.push(format!(
                "{} records have indices beyond {source}'s {} units ({})",
                report.out_of_range.len(),
                info.width,
                shown.join(", ")
            ));
        }
        bail!(
            "not imported: {}; pass --force to import anyway (out-of-range records are skipped)",
            problems.join("; ")
        );
    }
    report.imported = store.add_explanations(&items)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_nans_become_null_outside_strings() {
        assert_eq!(
            nan_to_null(r#"{"a": NaN, "b": "NaN", "c": [Infinity, -Infinity]}"#),
            r#"{"a": null, "b": "NaN", "c": [null, null]}"#
        );
    }

    #[test]
    fn model_names_match_loosely() {
        assert!(same_model("smollm2-135m", "SmolLM2 135M Instruct"));
        assert!(!same_model("gemma-2-2b", "SmolLM2 135M Instruct"));
        assert!(!same_model("", "x"));
    }

    #[test]
    fn source_layers_come_from_hook_names() {
        assert_eq!(source_layer("blocks.12.mlp.hook_post"), Some(12));
        assert_eq!(source_layer("ln_final.hook_normalized"), None);
    }
}
