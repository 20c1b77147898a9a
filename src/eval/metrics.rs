//! Detection and segmentation metrics, computed exactly.
//!
//! Every metric sweeps the thresholds given by the distinct scores, highest
//! first, with tied scores moving together (as scikit-learn's `roc_curve` and
//! `precision_recall_curve` do), so results agree with scikit-learn to
//! floating-point precision, ties included:
//! - AUROC: trapezoidal area under the ROC curve (`roc_auc_score`);
//! - AUPR: average precision, `Σ (R_n − R_{n−1}) P_n` (`average_precision_score`);
//! - F1-max: the best `2PR/(P+R)` over the precision–recall curve's points;
//! - PRO: the per-region overlap of the MVTec AD protocol — every connected
//!   defect region (8-connectivity) counts equally — integrated over the
//!   false-positive rate from 0 to 0.3 (trapezoid, interpolated at 0.3) and
//!   divided by 0.3. Every distinct pixel score is a threshold: no sampling.
//!
//! Metrics that are undefined for the data (one class only) are errors, never
//! NaN.

/// Why a metric cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Scores and labels differ in length, or there is no data.
    #[error("{0}")]
    Input(String),
    /// Only one class present: the metric is undefined.
    #[error("{metric} is undefined: {reason}")]
    Undefined {
        /// Metric name.
        metric: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// One point per distinct threshold: cumulative true and false positives.
struct Sweep {
    tps: Vec<f64>,
    fps: Vec<f64>,
    positives: f64,
    negatives: f64,
}

fn sweep(scores: &[f32], labels: &[bool]) -> Result<Sweep, Error> {
    if scores.len() != labels.len() {
        return Err(Error::Input(format!(
            "{} scores but {} labels",
            scores.len(),
            labels.len()
        )));
    }
    if scores.is_empty() {
        return Err(Error::Input("no samples".into()));
    }
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(Error::Input("scores must be finite numbers".into()));
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0f64, 0f64);
    let (mut tps, mut fps) = (Vec::new(), Vec::new());
    for (i, &k) in order.iter().enumerate() {
        if labels[k] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = i + 1 == order.len() || scores[order[i + 1]] != scores[k];
        if last_of_tie {
            tps.push(tp);
            fps.push(fp);
        }
    }
    Ok(Sweep {
        tps,
        fps,
        positives: tp,
        negatives: fp,
    })
}

/// Area under the ROC curve.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Result<f64, Error> {
    let s = sweep(scores, labels)?;
    if s.positives == 0.0 || s.negatives == 0.0 {
        return Err(Error::Undefined {
            metric: "AUROC",
            reason: "needs both normal and anomalous samples",
        });
    }
    let (mut area, mut prev_tpr, mut prev_fpr) = (0.0, 0.0, 0.0);
    for (tp, fp) in s.tps.iter().zip(&s.fps) {
        let (tpr, fpr) = (tp / s.positives, fp / s.negatives);
        area += (fpr - prev_fpr) * (tpr + prev_tpr) / 2.0;
        prev_tpr = tpr;
        prev_fpr = fpr;
    }
    Ok(area)
}

/// Average precision (area under the precision–recall curve, step-wise).
pub fn average_precision(scores: &[f32], labels: &[bool]) -> Result<f64, Error> {
    let s = sweep(scores, labels)?;
    if s.positives == 0.0 {
        return Err(Error::Undefined {
            metric: "AUPR",
            reason: "needs anomalous samples",
        });
    }
    let (mut ap, mut prev_recall) = (0.0, 0.0);
    for (tp, fp) in s.tps.iter().zip(&s.fps) {
        let recall = tp / s.positives;
        let precision = tp / (tp + fp);
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    Ok(ap)
}

/// Best F1 over all thresholds, and the score threshold that achieves it
/// (an image is anomalous when its score is ≥ the threshold).
pub fn f1_max(scores: &[f32], labels: &[bool]) -> Result<(f64, f32), Error> {
    let s = sweep(scores, labels)?;
    if s.positives == 0.0 {
        return Err(Error::Undefined {
            metric: "F1-max",
            reason: "needs anomalous samples",
        });
    }
    let mut distinct: Vec<f32> = scores.to_vec();
    distinct.sort_by(|a, b| b.total_cmp(a));
    distinct.dedup();
    let mut best = (0.0, distinct[0]);
    for ((tp, fp), thr) in s.tps.iter().zip(&s.fps).zip(distinct) {
        let precision = tp / (tp + fp);
        let recall = tp / s.positives;
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        if f1 > best.0 {
            best = (f1, thr);
        }
    }
    Ok(best)
}

/// ROC curve points `(fpr, tpr)`, starting at (0, 0).
pub fn roc_curve(scores: &[f32], labels: &[bool]) -> Result<Vec<(f64, f64)>, Error> {
    let s = sweep(scores, labels)?;
    if s.positives == 0.0 || s.negatives == 0.0 {
        return Err(Error::Undefined {
            metric: "ROC",
            reason: "needs both normal and anomalous samples",
        });
    }
    let mut pts = vec![(0.0, 0.0)];
    pts.extend(
        s.tps
            .iter()
            .zip(&s.fps)
            .map(|(tp, fp)| (fp / s.negatives, tp / s.positives)),
    );
    Ok(pts)
}

/// Precision–recall curve points `(recall, precision)`, from high thresholds to low.
pub fn pr_curve(scores: &[f32], labels: &[bool]) -> Result<Vec<(f64, f64)>, Error> {
    let s = sweep(scores, labels)?;
    if s.positives == 0.0 {
        return Err(Error::Undefined {
            metric: "PR",
            reason: "needs anomalous samples",
        });
    }
    let mut pts = vec![(0.0, 1.0)];
    pts.extend(
        s.tps
            .iter()
            .zip(&s.fps)
            .map(|(tp, fp)| (tp / s.positives, tp / (tp + fp))),
    );
    Ok(pts)
}

/// Largest false-positive rate PRO integrates over.
pub const PRO_MAX_FPR: f64 = 0.3;

pub use crate::winclip::regions::connected_regions;

/// One image for PRO: its anomaly map and its ground-truth mask, same size.
#[derive(Debug, Clone)]
pub struct MaskedMap<'a> {
    /// Anomaly map, row-major.
    pub map: &'a [f32],
    /// Ground truth, row-major (true = defect).
    pub mask: &'a [bool],
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
}

/// Normalised area under the PRO curve up to [`PRO_MAX_FPR`].
pub fn pro(images: &[MaskedMap<'_>]) -> Result<f64, Error> {
    // Every pixel: (score, region id or 0 for normal), region sizes.
    let mut pixels: Vec<(f32, u32)> = Vec::new();
    let mut region_size: Vec<f64> = vec![0.0];
    for im in images {
        let n = im.height * im.width;
        if im.map.len() != n || im.mask.len() != n {
            return Err(Error::Input("PRO: map and mask sizes differ".into()));
        }
        let (labels, count) = connected_regions(im.mask, im.height, im.width);
        let offset = region_size.len() as u32 - 1;
        region_size.resize(region_size.len() + count as usize, 0.0);
        for (i, &l) in labels.iter().enumerate() {
            let id = if l == 0 { 0 } else { l + offset };
            if id != 0 {
                region_size[id as usize] += 1.0;
            }
            if !im.map[i].is_finite() {
                return Err(Error::Input("PRO: maps must be finite".into()));
            }
            pixels.push((im.map[i], id));
        }
    }
    let regions = region_size.len() - 1;
    let negatives = pixels.iter().filter(|(_, r)| *r == 0).count() as f64;
    if regions == 0 {
        return Err(Error::Undefined {
            metric: "PRO",
            reason: "needs defect regions in the masks",
        });
    }
    if negatives == 0.0 {
        return Err(Error::Undefined {
            metric: "PRO",
            reason: "needs normal pixels",
        });
    }
    pixels.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut fp, mut overlap_sum) = (0.0f64, 0.0f64);
    let mut curve: Vec<(f64, f64)> = vec![(0.0, 0.0)];
    for i in 0..pixels.len() {
        let (score, region) = pixels[i];
        if region == 0 {
            fp += 1.0;
        } else {
            overlap_sum += 1.0 / region_size[region as usize];
        }
        if i + 1 == pixels.len() || pixels[i + 1].0 != score {
            curve.push((fp / negatives, overlap_sum / regions as f64));
        }
    }
    // Trapezoid up to FPR 0.3, interpolating the segment that crosses it.
    let mut area = 0.0;
    for w in curve.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x0 >= PRO_MAX_FPR {
            break;
        }
        if x1 > PRO_MAX_FPR {
            let y = y0 + (y1 - y0) * (PRO_MAX_FPR - x0) / (x1 - x0);
            area += (PRO_MAX_FPR - x0) * (y0 + y) / 2.0;
            break;
        }
        area += (x1 - x0) * (y0 + y1) / 2.0;
    }
    Ok(area / PRO_MAX_FPR)
}

/// Pearson's correlation of two equally long samples (NaN when either is
/// constant or empty).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_is_one_for_a_line_minus_one_reversed_and_nan_when_constant() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&x, &[3.0, 5.0, 7.0, 9.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&x, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert!(pearson(&x, &[2.0; 4]).is_nan());
        assert!(pearson(&[], &[]).is_nan());
        let r = pearson(&x, &[1.0, 3.0, 2.0, 4.0]);
        assert!((r - 0.8).abs() < 1e-12, "{r}");
    }

    #[test]
    fn perfect_and_inverted_rankings() {
        let s = [0.1, 0.2, 0.8, 0.9];
        let l = [false, false, true, true];
        assert_eq!(auroc(&s, &l).unwrap(), 1.0);
        assert_eq!(average_precision(&s, &l).unwrap(), 1.0);
        assert_eq!(f1_max(&s, &l).unwrap(), (1.0, 0.8));
        let inv = [true, true, false, false];
        assert_eq!(auroc(&s, &inv).unwrap(), 0.0);
    }

    #[test]
    fn ties_count_half() {
        // One positive and one negative with the same score: AUROC 0.5.
        assert_eq!(auroc(&[0.5, 0.5], &[true, false]).unwrap(), 0.5);
        assert_eq!(average_precision(&[0.5, 0.5], &[true, false]).unwrap(), 0.5);
    }

    #[test]
    fn one_class_is_an_error_not_nan() {
        assert!(matches!(
            auroc(&[0.1, 0.2], &[false, false]),
            Err(Error::Undefined { .. })
        ));
        assert!(matches!(
            auroc(&[0.1, 0.2], &[true, true]),
            Err(Error::Undefined { .. })
        ));
        assert!(matches!(
            average_precision(&[0.1], &[false]),
            Err(Error::Undefined { .. })
        ));
        // All anomalous: precision is 1 everywhere.
        assert_eq!(average_precision(&[0.1, 0.2], &[true, true]).unwrap(), 1.0);
        assert!(matches!(auroc(&[], &[]), Err(Error::Input(_))));
        assert!(matches!(
            auroc(&[f32::NAN, 0.1], &[true, false]),
            Err(Error::Input(_))
        ));
    }

    #[test]
    fn pro_of_a_perfect_map_is_one_and_small_regions_weigh_as_much_as_big_ones() {
        // 1x6 image: a 1-pixel region and a 3-pixel region, two normal pixels.
        let mask = [true, false, true, true, true, false];
        let perfect = [0.9, 0.1, 0.8, 0.8, 0.8, 0.2];
        let im = MaskedMap {
            map: &perfect,
            mask: &mask,
            height: 1,
            width: 6,
        };
        assert!((pro(&[im]).unwrap() - 1.0).abs() < 1e-12);
        // Finding only the small region before any false positive: PRO 0.5 until
        // the first false positive at FPR 0.5 (beyond 0.3), so the integral is 0.5.
        let small_only = [0.9, 0.5, 0.1, 0.1, 0.1, 0.4];
        let im = MaskedMap {
            map: &small_only,
            mask: &mask,
            height: 1,
            width: 6,
        };
        assert!((pro(&[im]).unwrap() - 0.5).abs() < 1e-12);
        let none = [false; 6];
        let im = MaskedMap {
            map: &perfect,
            mask: &none,
            height: 1,
            width: 6,
        };
        assert!(matches!(pro(&[im]), Err(Error::Undefined { .. })));
    }
}
