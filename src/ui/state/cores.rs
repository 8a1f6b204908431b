//! The prompt's core neurons against another prompt's (definitions §12): the other prompt, and
//! its sentence cores once the worker has them. The overlap per layer is CoreInfer's Jaccard.

use crate::analysis::core_neurons::{intersection, jaccard, similarity};
use crate::worker::CoresReport;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoreCompare {
    /// The prompt compared with.
    pub text: String,
    /// Its cores, for the α they were asked with.
    pub report: Option<Box<CoresReport>>,
    pub waiting: bool,
}

/// One layer's overlap of two sentence cores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CoreOverlap {
    pub jaccard: f64,
    /// CoreInfer's similarity: shared neurons over the other prompt's core.
    pub similarity: f64,
    pub shared: usize,
}

impl CoreCompare {
    /// The overlap at each layer of `ours` (the prompt's sentence cores by layer) with the
    /// other prompt's, when its report is for this text and `alpha`.
    pub fn overlaps(
        &self,
        ours: &[Option<Vec<usize>>],
        alpha: f64,
    ) -> Option<Vec<Option<CoreOverlap>>> {
        let report = self
            .report
            .as_ref()
            .filter(|r| r.request.text == self.text && r.request.alpha == alpha)?;
        Some(
            ours.iter()
                .enumerate()
                .map(|(l, ours)| {
                    let (ours, theirs) = (ours.as_ref()?, report.cores.get(l)?);
                    Some(CoreOverlap {
                        jaccard: jaccard(ours, theirs),
                        similarity: similarity(ours, theirs),
                        shared: intersection(ours, theirs),
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::CoresRequest;

    #[test]
    fn overlaps_are_per_layer_and_only_for_the_asked_text_and_alpha() {
        let mut c = CoreCompare {
            text: "b".into(),
            report: Some(Box::new(CoresReport {
                request: CoresRequest {
                    text: "b".into(),
                    bos: crate::model::BosMode::Auto,
                    alpha: 0.4,
                },
                cores: vec![vec![1, 2, 3], vec![4]],
                n_tokens: 3,
            })),
            waiting: false,
        };
        let ours = vec![Some(vec![2, 3, 5, 6]), None];
        let o = c.overlaps(&ours, 0.4).unwrap();
        // {2, 3} shared of {1, 2, 3, 5, 6}; 2 of the smaller core's 3.
        assert_eq!(
            o[0],
            Some(CoreOverlap {
                jaccard: 0.4,
                similarity: 2.0 / 3.0,
                shared: 2
            })
        );
        assert_eq!(o[1], None, "a layer not in yet");
        assert_eq!(c.overlaps(&ours, 0.5), None, "another α");
        c.text = "c".into();
        assert_eq!(c.overlaps(&ours, 0.4), None, "another text");
    }
}
