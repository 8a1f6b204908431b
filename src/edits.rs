//! Interventions from their text descriptions. The command line's flags (`--clamp`,
//! `--ablate-head`, `--steer-latent`, `--clamp-latent`, `--at`) and the server's `dendrite`
//! extension field (`{"clamp": "blocks.3.mlp.hook_post:12=5"}`, …) say the same things the same
//! way, and both become engine interventions here.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};

use crate::model::{AblationMode, Intervention, ValueOp};
use crate::sae::Sae;
use crate::sae::steer::{SteerMode, latent_clamp};

/// What an edit description does (named after its command-line flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditFlag {
    /// `HOOK:NEURON=VALUE`: set a neuron.
    Clamp,
    /// `LAYER.HEAD[:zero|mean]`: ablate an attention head.
    AblateHead,
    /// `LATENT:SCALE`: add SCALE × an SAE latent's decoder direction where the SAE writes.
    SteerLatent,
    /// `LATENT=VALUE`: set an SAE latent (encode, set, decode, add back the error).
    ClampLatent,
}

impl EditFlag {
    /// The flag, for messages.
    pub fn flag(self) -> &'static str {
        match self {
            EditFlag::Clamp => "--clamp",
            EditFlag::AblateHead => "--ablate-head",
            EditFlag::SteerLatent => "--steer-latent",
            EditFlag::ClampLatent => "--clamp-latent",
        }
    }
}

/// One described edit.
#[derive(Clone, Debug, PartialEq)]
pub struct EditDescription {
    pub kind: EditFlag,
    pub value: String,
    /// Which SAE a latent edit means (by name); may be left out when there is one.
    pub sae: Option<String>,
}

/// Where the edits apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum At {
    /// Every position, the prompt's included.
    #[default]
    All,
    /// Only the generated positions.
    Generated,
}

impl std::str::FromStr for At {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(At::All),
            "generated" => Ok(At::Generated),
            other => bail!("\"{other}\": expected all or generated"),
        }
    }
}

/// An SAE edits can name.
#[derive(Clone)]
pub struct NamedSae {
    pub name: String,
    pub sae: Arc<Sae>,
}

/// The interventions `edits` describe, for a prompt of `prompt_len` tokens continued by up
/// to `max_new` (the generated positions, for [`At::Generated`]).
pub fn build(
    edits: &[EditDescription],
    saes: &[NamedSae],
    at: At,
    prompt_len: usize,
    max_new: usize,
) -> Result<Vec<Intervention>> {
    let mut out = Vec::with_capacity(edits.len());
    for edit in edits {
        let flag = edit.kind.flag();
        let spec = edit.value.as_str();
        let intervention = match edit.kind {
            EditFlag::Clamp => parse_clamp(spec)?,
            EditFlag::AblateHead => parse_ablation(spec)?,
            EditFlag::SteerLatent => {
                let sae = find_sae(saes, edit)?;
                let (latent, scale) = parse_pair(spec, ':', flag, "LATENT:SCALE")?;
                sae.sae
                    .steering(latent, SteerMode::Add { scale }, None)
                    .with_context(|| format!("{flag} {spec}"))?
            }
            EditFlag::ClampLatent => {
                let sae = find_sae(saes, edit)?;
                let (latent, value) = parse_pair(spec, '=', flag, "LATENT=VALUE")?;
                if latent >= sae.sae.cfg.d_sae {
                    bail!(
                        "{flag} {spec}: the SAE {} has {} latents",
                        sae.name,
                        sae.sae.cfg.d_sae
                    );
                }
                latent_clamp(
                    sae.sae.clone(),
                    &sae.name,
                    latent,
                    ValueOp::Set(value),
                    None,
                )
            }
        };
        out.push(intervention);
    }
    if at == At::Generated {
        let generated: Vec<usize> = (prompt_len..prompt_len + max_new).collect();
        for i in &mut out {
            i.positions = Some(generated.clone());
        }
    }
    Ok(out)
}

fn find_sae<'a>(saes: &'a [NamedSae], edit: &EditDescription) -> Result<&'a NamedSae> {
    let flag = edit.kind.flag();
    let names = || {
        saes.iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (&edit.sae, saes) {
        (_, []) => bail!("{flag} needs an SAE, and none is loaded (--sae DIR)"),
        (None, [only]) => Ok(only),
        (None, _) => bail!(
            "{flag} {}: several SAEs are loaded ({}); say which",
            edit.value,
            names()
        ),
        (Some(name), _) => saes
            .iter()
            .find(|s| &s.name == name)
            .ok_or_else(|| anyhow!("{flag}: no SAE named \"{name}\" (loaded: {})", names())),
    }
}

/// `HOOK:NEURON=VALUE` → a set intervention.
pub fn parse_clamp(spec: &str) -> Result<Intervention> {
    let bad = || anyhow!("--clamp {spec}: expected HOOK:NEURON=VALUE");
    let (hook, rest) = spec.rsplit_once(':').ok_or_else(bad)?;
    let (neuron, value) = rest.split_once('=').ok_or_else(bad)?;
    let neuron: usize = neuron
        .trim()
        .parse()
        .with_context(|| format!("--clamp {spec}: bad neuron index"))?;
    let value: f32 = value
        .trim()
        .parse()
        .with_context(|| format!("--clamp {spec}: bad value"))?;
    if !value.is_finite() {
        bail!("--clamp {spec}: the value must be finite");
    }
    Ok(Intervention::neurons(
        hook,
        vec![neuron],
        ValueOp::Set(value),
    ))
}

/// `LAYER.HEAD[:zero|mean]` → a head ablation.
pub fn parse_ablation(spec: &str) -> Result<Intervention> {
    let (head_spec, mode) = spec.split_once(':').unwrap_or((spec, "zero"));
    let (layer, head) = head_spec
        .split_once('.')
        .ok_or_else(|| anyhow!("--ablate-head {spec}: expected LAYER.HEAD[:zero|mean]"))?;
    let layer: usize = layer
        .parse()
        .with_context(|| format!("--ablate-head {spec}: bad layer"))?;
    let head: usize = head
        .parse()
        .with_context(|| format!("--ablate-head {spec}: bad head"))?;
    let mode = match mode {
        "zero" => AblationMode::Zero,
        "mean" => AblationMode::Mean,
        other => bail!("--ablate-head {spec}: unknown mode \"{other}\" (zero or mean)"),
    };
    Ok(Intervention::ablate_head(layer, head, mode))
}

/// `I<sep>X` → (latent, value).
fn parse_pair(spec: &str, sep: char, flag: &str, form: &str) -> Result<(usize, f32)> {
    let bad = || anyhow!("{flag} {spec}: expected {form}");
    let (latent, value) = spec.split_once(sep).ok_or_else(bad)?;
    let value: f32 = value.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() {
        bail!("{flag} {spec}: the value must be finite");
    }
    Ok((latent.trim().parse().map_err(|_| bad())?, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(kind: EditFlag, value: &str) -> EditDescription {
        EditDescription {
            kind,
            value: value.into(),
            sae: None,
        }
    }

    #[test]
    fn descriptions_become_interventions_at_the_positions_asked() {
        let edits = [
            edit(EditFlag::Clamp, "blocks.1.mlp.hook_post:7=2.5"),
            edit(EditFlag::AblateHead, "0.1"),
        ];
        let all = build(&edits, &[], At::All, 3, 2).unwrap();
        assert_eq!(all[0].hook, "blocks.1.mlp.hook_post");
        assert_eq!(all[0].positions, None);
        assert_eq!(all[1].hook, "blocks.0.attn.hook_z");
        let generated = build(&edits, &[], At::Generated, 3, 2).unwrap();
        assert!(generated.iter().all(|i| i.positions == Some(vec![3, 4])));
    }

    #[test]
    fn bad_descriptions_say_what_was_expected() {
        for (kind, value, expected) in [
            (
                EditFlag::Clamp,
                "blocks.1.mlp.hook_post=3",
                "HOOK:NEURON=VALUE",
            ),
            (EditFlag::Clamp, "h:x=3", "bad neuron"),
            (EditFlag::Clamp, "h:1=inf", "finite"),
            (EditFlag::AblateHead, "3", "LAYER.HEAD"),
            (EditFlag::AblateHead, "3.1:half", "unknown mode"),
            (EditFlag::SteerLatent, "1:2", "needs an SAE"),
        ] {
            let err = build(&[edit(kind, value)], &[], At::All, 1, 1).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{value}: {err:#}");
        }
        assert!("sometimes".parse::<At>().is_err());
        assert_eq!("generated".parse::<At>().unwrap(), At::Generated);
    }
}
