//! SAE latents as engine interventions, for the app's worker and the command line alike:
//! steering along a latent's decoder direction, and clamping a latent (encode, set, decode,
//! add back the reconstruction error).

use std::sync::Arc;

use super::{Result, Sae, SaeError};
use crate::model::{Intervention, InterventionKind, ProjectionMode, RowEdit, ValueOp};

/// How a steering edit changes the component along a direction `d` (an SAE latent's decoder
/// row): `Add` adds `scale · d`; `SetProjection` is the orthogonal decomposition (keep
/// everything orthogonal to `d̂`, set the component along it to `value`); `CapProjection` cuts
/// components along `d̂` above `max` down to it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum SteerMode {
    Add { scale: f32 },
    SetProjection { value: f32 },
    CapProjection { max: f32 },
}

impl Sae {
    /// Steering along latent `latent`'s decoder direction at the hook the SAE writes
    /// (`hook_name_out` for transcoders), at `positions` (`None` = all).
    pub fn steering(
        &self,
        latent: usize,
        mode: SteerMode,
        positions: Option<Vec<usize>>,
    ) -> Result<Intervention> {
        let direction: Arc<[f32]> = self
            .decoder_direction(latent)
            .ok_or_else(|| {
                SaeError::InvalidInput(format!(
                    "latent {latent} out of range: the SAE has {} latents",
                    self.cfg.d_sae
                ))
            })?
            .into();
        let kind = match mode {
            SteerMode::Add { scale } => InterventionKind::AddVector {
                vector: direction,
                scale,
            },
            SteerMode::SetProjection { value } => InterventionKind::Project {
                direction,
                mode: ProjectionMode::Set { value },
            },
            SteerMode::CapProjection { max } => InterventionKind::Project {
                direction,
                mode: ProjectionMode::Cap { max },
            },
        };
        Ok(Intervention {
            hook: self
                .cfg
                .hook_name_out
                .clone()
                .unwrap_or_else(|| self.cfg.hook_name.clone()),
            positions,
            kind,
        })
    }
}

/// Clamping latent `latent` of `sae` at its input hook: each selected row is encoded, the
/// latent edited by `op`, decoded, and the SAE's reconstruction error added back. `key` names
/// the SAE (an incremental rerun compares edits by key).
pub fn latent_clamp(
    sae: Arc<Sae>,
    key: &str,
    latent: usize,
    op: ValueOp,
    positions: Option<Vec<usize>>,
) -> Intervention {
    let hook = sae.cfg.hook_name.clone();
    let edit = RowEdit {
        // Everything the edit depends on, so an unchanged clamp is not rerun.
        key: format!("sae#{key}:{latent}:{op:?}"),
        edit: Arc::new(move |rows: &mut [f32], width: usize| {
            sae.edit_latent(rows, rows.len() / width.max(1), latent, op)
                .map_err(|e| e.to_string())
        }),
    };
    Intervention {
        hook,
        positions,
        kind: InterventionKind::Rows(edit),
    }
}
