//! A unit's facets from its top examples in a corpus store (definitions §15): each window
//! runs through the model again, the residual stream after the unit's block at the window's
//! peak is its vector, and [`crate::analysis::facets::cluster`] splits the windows.

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::store::{ExampleOut, Store};
use crate::analysis::facets::{cluster, label};
use crate::model::{HookSpec, Model, NoObserver};

/// One facet of a unit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Facet {
    /// Its windows, strongest peak first.
    pub windows: Vec<u64>,
    pub size: usize,
    pub mean_peak: f64,
    /// Its 3 most frequent peak tokens with counts.
    pub label: String,
    /// What an explainer LLM makes of its windows (auto-interp), when one was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
    /// The windows themselves (tokens, activations), for the inspector.
    #[serde(skip)]
    pub examples: Vec<ExampleOut>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Facets {
    pub source: String,
    pub unit: usize,
    /// The hook whose value at the peak clustered the windows.
    pub hook: String,
    pub k: usize,
    pub silhouette: f64,
    pub facets: Vec<Facet>,
    /// Why the explainer gave no labels, when it was asked and failed (the endpoint is down).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain_error: Option<String>,
}

/// The hook whose value at a window's peak places it: the residual stream after the unit's
/// block for MLP neurons (`blocks.ℓ.hook_resid_post`), an SAE's own input hook for its
/// latents when that is a residual-stream hook, else the block's residual stream after it.
fn context_hook(source_hook: &str, kind: &str) -> Result<String> {
    let layer: usize = source_hook
        .strip_prefix("blocks.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|l| l.parse().ok())
        .with_context(|| format!("{source_hook} names no block"))?;
    if kind == "sae" && source_hook.contains("hook_resid") {
        return Ok(source_hook.to_string());
    }
    Ok(format!("blocks.{layer}.hook_resid_post"))
}

/// The facets of `unit` of `source` in `store`, from its top examples (k chosen by silhouette
/// unless given; `seed` seeds k-means++).
pub fn unit_facets(
    model: &Model,
    store: &Store,
    source: &str,
    unit: usize,
    k: Option<usize>,
    seed: u64,
) -> Result<Facets> {
    let info = store.source(source)?;
    let hook = context_hook(&info.hook, &info.kind)?;
    if model.transformer.hook_width(&hook).is_none() {
        bail!("the open model has no {hook}: is the store this model's?");
    }
    let report = store.unit_report(source, unit, None)?;
    let examples: Vec<ExampleOut> = report
        .examples
        .into_iter()
        .filter(|e| e.max_act > 0.0 && (e.max_pos as usize) < e.token_ids.len())
        .collect();
    let spec = HookSpec::capture([hook.clone()]);
    let mut points = Vec::with_capacity(examples.len());
    for e in &examples {
        let out = model.transformer.forward(
            std::slice::from_ref(&e.token_ids),
            &spec,
            &mut NoObserver,
        )?;
        let row = out
            .captures
            .get(&hook)
            .with_context(|| format!("{hook} was not captured"))?
            .get(0)?
            .get(e.max_pos as usize)?
            .to_vec1::<f32>()?;
        points.push(row);
    }
    let clustering = cluster(&points, k, seed);
    let mut facets: Vec<Facet> = (0..clustering.k)
        .map(|c| {
            let mut members: Vec<&ExampleOut> = examples
                .iter()
                .zip(&clustering.assign)
                .filter(|(_, a)| **a == c)
                .map(|(e, _)| e)
                .collect();
            members.sort_by(|a, b| {
                b.max_act
                    .total_cmp(&a.max_act)
                    .then(a.window.cmp(&b.window))
            });
            let peaks: Vec<(u32, String, f32)> = members
                .iter()
                .map(|e| {
                    let p = e.max_pos as usize;
                    (
                        e.token_ids[p],
                        e.tokens.get(p).cloned().unwrap_or_default(),
                        e.max_act,
                    )
                })
                .collect();
            Facet {
                windows: members.iter().map(|e| e.window).collect(),
                size: members.len(),
                mean_peak: members.iter().map(|e| e.max_act as f64).sum::<f64>()
                    / members.len().max(1) as f64,
                label: label(&peaks),
                explanation: None,
                examples: members.into_iter().cloned().collect(),
            }
        })
        .filter(|f| f.size > 0)
        .collect();
    // Largest facet first.
    facets.sort_by(|a, b| {
        b.size
            .cmp(&a.size)
            .then(b.mean_peak.total_cmp(&a.mean_peak))
    });
    Ok(Facets {
        source: source.to_string(),
        unit,
        hook,
        k: facets.len(),
        silhouette: clustering.silhouette,
        facets,
        explain_error: None,
    })
}

/// Windows an explainer is shown per facet, and tokens around each peak.
const EXPLAIN_WINDOWS: usize = 8;
const EXPLAIN_TOKENS: usize = 32;

/// Labels every facet from an explainer LLM: auto-interp's explainer prompt over the facet's
/// strongest windows, cropped around their peaks. A failed request stops the labelling and is
/// recorded in `explain_error` (the facets and their token labels stay); an answer without an
/// explanation leaves that facet unlabelled.
pub fn explain_facets(
    facets: &mut Facets,
    client: &super::interp::ChatClient,
    kind: super::interp::ExplainerKind,
) {
    use super::interp::{ChatOptions, run::crop};
    for facet in &mut facets.facets {
        let records: Vec<_> = facet
            .examples
            .iter()
            .take(EXPLAIN_WINDOWS)
            .filter(|e| !e.tokens.is_empty())
            .map(|e| crop(&e.tokens, &e.acts, e.max_pos as usize, EXPLAIN_TOKENS))
            .collect();
        if records.is_empty() {
            continue;
        }
        let options = ChatOptions {
            max_tokens: kind.max_tokens(),
            temperature: 0.0,
            top_logprobs: None,
        };
        match client.chat(&kind.messages(&records), &options) {
            Ok(reply) => facet.explanation = kind.parse(&reply.text),
            Err(e) => {
                facets.explain_error = Some(e.to_string());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neurons_are_placed_by_the_residual_after_their_block() {
        assert_eq!(
            context_hook("blocks.3.mlp.hook_post", "hook").unwrap(),
            "blocks.3.hook_resid_post"
        );
        assert_eq!(
            context_hook("blocks.6.hook_resid_post", "sae").unwrap(),
            "blocks.6.hook_resid_post"
        );
        assert!(context_hook("hook_embed", "hook").is_err());
    }
}
