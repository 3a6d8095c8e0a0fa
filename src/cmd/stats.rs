//! Pearson's chi-square goodness-of-fit test, for judging how exactly a split is honoured.

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Result of comparing observed counts with configured weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChiSquare {
    pub statistic: f64,
    pub degrees_of_freedom: usize,
    /// Probability of a deviation at least this large if the split is exactly the weights.
    pub p_value: f64,
}

/// Test `observed` counts against relative `weights`. Categories with weight 0 must see
/// no traffic: any count there makes p = 0.
pub fn chi_square(observed: &[u64], weights: &[f64]) -> ChiSquare {
    let n: u64 = observed.iter().sum();
    let total_weight: f64 = weights.iter().sum();
    let mut statistic = 0.0;
    let mut categories = 0usize;
    let mut impossible = false;
    for (&o, &w) in observed.iter().zip(weights) {
        if w <= 0.0 {
            impossible |= o > 0;
            continue;
        }
        categories += 1;
        let expected = n as f64 * w / total_weight;
        let d = o as f64 - expected;
        statistic += d * d / expected;
    }
    let degrees_of_freedom = categories.saturating_sub(1);
    let p_value = if impossible {
        0.0
    } else if degrees_of_freedom == 0 || n == 0 {
        1.0
    } else {
        p_value(statistic, degrees_of_freedom)
    };
    ChiSquare {
        statistic: if impossible { f64::INFINITY } else { statistic },
        degrees_of_freedom,
        p_value,
    }
}

/// The chi-square upper tail: the probability of a statistic at least this large with
/// `dof` degrees of freedom (statrs: the regularized upper incomplete gamma, its Lanczos
/// ln-gamma good to ~1e-15). Statistics 0 and infinite give 1 and 0.
fn p_value(statistic: f64, dof: usize) -> f64 {
    // the caller passes dof >= 1; ChiSquared refuses only dof 0 (or non-finite), where no
    // deviation is possible
    ChiSquared::new(dof as f64).map_or(1.0, |d| d.sf(statistic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_p_values() {
        // chi-square 3.841 with 1 degree of freedom is the 5% critical value
        assert!((p_value(3.841, 1) - 0.05).abs() < 1e-3);
        // 2 degrees of freedom: the tail is exp(-statistic/2)
        assert!((p_value(10.0, 2) - (-5.0f64).exp()).abs() < 1e-9);
        // 23.93 with 1 df is about 1e-6
        let p = p_value(23.93, 1);
        assert!(p > 0.9e-6 && p < 1.1e-6, "{p}");
    }

    /// (dof, statistic, p-value) as the hand-written incomplete gamma gave them, from
    /// p ~ 0.9 down to p ~ 1e-12; statrs agrees to 6e-11 (the old ln-gamma's error, at
    /// dof 99), so a future change of implementation is checked against them too.
    const PINNED: [(usize, f64, f64); 20] = [
        (1, 0.0158, 0.8999709447871181),
        (1, 0.455, 0.4999700481493585),
        (1, 3.841, 0.050013683763954486),
        (1, 23.93, 9.990275657592511e-7),
        (1, 50.84, 1.0021053051778176e-12),
        (2, 0.21, 0.9003245225862656),
        (2, 1.386, 0.5000735956957677),
        (2, 5.991, 0.050011615026579095),
        (2, 27.63, 1.0005106883211758e-6),
        (2, 55.26, 1.0010216374449132e-12),
        (9, 4.17, 0.8998712909345948),
        (9, 8.34, 0.5002785761330295),
        (9, 16.92, 0.04998360638750551),
        (9, 44.81, 1.000399229153437e-6),
        (9, 76.0, 1.0027008026920197e-12),
        (99, 81.45, 0.8999893795989969),
        (99, 98.33, 0.5001177648309367),
        (99, 123.2, 0.05016009701650881),
        (99, 180.8, 9.981047005178759e-7),
        (99, 232.3, 1.006035847693313e-12),
    ];

    #[test]
    fn p_values_stay_as_pinned() {
        for (dof, statistic, pinned) in PINNED {
            let p = p_value(statistic, dof);
            let relative = ((p - pinned) / pinned).abs();
            assert!(
                relative < 1e-9,
                "dof {dof}, statistic {statistic}: {p} vs {pinned}"
            );
        }
    }

    #[test]
    fn exact_split_has_p_one_and_zero_weight_traffic_p_zero() {
        let r = chi_square(&[900, 100], &[90.0, 10.0]);
        assert_eq!(r.statistic, 0.0);
        assert!((r.p_value - 1.0).abs() < 1e-12);
        assert_eq!(chi_square(&[900, 100, 1], &[90.0, 10.0, 0.0]).p_value, 0.0);
        assert!(chi_square(&[500, 500], &[90.0, 10.0]).p_value < 1e-100);
    }
}
