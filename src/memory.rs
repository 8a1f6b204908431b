//! A memory guard: before loading a model or an SAE, or running a long prompt, estimate what it
//! will take and refuse, with a message that says how much is needed and what to do, when it
//! does not fit in the memory available (rather than let the OS kill the app mid-allocation).

/// Overrides (lowers) the memory Dendrite considers available, in MiB: for machines shared
/// with other work, and for tests.
pub const LIMIT_ENV: &str = "DENDRITE_MEMORY_LIMIT_MIB";

/// Bytes this process may still allocate: the kernel's `MemAvailable`, or the limit in
/// [`LIMIT_ENV`] when it is lower. `None` where neither is known (then nothing is refused).
pub fn available_bytes() -> Option<u64> {
    let limit = std::env::var(LIMIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|mib| mib << 20);
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib << 10)
        });
    match (limit, meminfo) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `Err(message)` when `needed` bytes do not fit in `available`: what needs it, how much, how
/// much there is, and `advice`.
pub fn check(needed: u64, available: Option<u64>, what: &str, advice: &str) -> Result<(), String> {
    match available {
        Some(available) if needed > available => Err(format!(
            "{what} needs about {} but only {} of memory {} available: {advice}",
            human(needed),
            human(available),
            if available == 1 { "is" } else { "are" }
        )),
        _ => Ok(()),
    }
}

/// What loading a model of `elements` weights takes: every weight in f32 (the packed matrices
/// the kernels read), a tenth more for the tensors dequantized on the way, and the runtime.
pub fn model_bytes(elements: u64) -> u64 {
    let weights = elements.saturating_mul(4);
    weights
        .saturating_add(weights / 10)
        .saturating_add(64 << 20)
}

/// What one prompt run keeps, for `tokens` tokens of a model of these sizes: per layer and
/// pass, the cached stage inputs, keys and values and the captures (the MLP's three hooks, the
/// residual stream, the MLP output), one layer's attention scores while it runs, and with
/// `patterns` every layer's `heads × t²` attention pattern; two passes when `intervened`.
/// Returns the total and the patterns' share.
pub fn run_bytes(
    dims: &crate::model::transformer::Dims,
    tokens: usize,
    patterns: bool,
    intervened: bool,
) -> (u64, u64) {
    let t = tokens as u64;
    let layers = dims.n_layers as u64;
    let per_layer = t
        .saturating_mul(8 * dims.d_model as u64 + 4 * dims.d_mlp as u64)
        .saturating_mul(4);
    let scores = (dims.n_heads as u64)
        .saturating_mul(t)
        .saturating_mul(t)
        .saturating_mul(4);
    let pattern_bytes = if patterns {
        scores.saturating_mul(layers)
    } else {
        0
    };
    let passes = if intervened { 2 } else { 1 };
    let total = per_layer
        .saturating_mul(layers)
        .saturating_add(pattern_bytes)
        .saturating_mul(passes)
        .saturating_add(scores);
    (total, pattern_bytes.saturating_mul(passes))
}

/// `1.5 GiB`, `740 MiB`, `12 KiB`.
pub fn human(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else if b >= MIB {
        format!("{:.0} MiB", b / MIB)
    } else {
        format!("{:.0} KiB", (b / 1024.0).ceil())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_does_not_fit_is_refused_with_the_numbers_and_the_advice() {
        assert_eq!(check(10, Some(10), "x", "y"), Ok(()));
        assert_eq!(check(10, None, "x", "y"), Ok(()));
        let e = check(
            3 << 30,
            Some(740 << 20),
            "the model",
            "close other programs",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "the model needs about 3.0 GiB but only 740 MiB of memory are available: close other \
             programs"
        );
        // SmolLM2's 134.5 M weights: ≈ 628 MiB (its measured peak with a pass is 740 MiB).
        assert_eq!(human(model_bytes(134_515_008)), "628 MiB");
        assert!(
            available_bytes().is_some_and(|b| b > 0),
            "Linux has /proc/meminfo"
        );
    }
}
