//! Elementwise f32 sigmoid, tanh and erf, computed as onnxruntime computes them: MLAS's
//! approximations (`MlasComputeLogistic`, `MlasComputeTanh`, `MlasComputeErf`) as dispatched on
//! an x86-64 FMA3 machine, so that a model's `Sigmoid`/`Tanh`/`Erf` (and the gates of
//! `DynamicQuantizeLSTM`) give onnxruntime's values bit for bit, and run vectorized.
//!
//! Sources: MLAS `logistic.cpp` / `tanh.cpp` and `x86_64/LogisticKernelFma3.S` /
//! `TanhKernelFma3.S`. Sigmoid clamps its input to ±18, evaluates an odd rational function
//! with fused multiply-adds, adds 0.5 and clamps the result below at 0; tanh clamps its input
//! to ±9 and evaluates Eigen's odd rational function. Erf (`erf.cpp`, `ErfKernelFma3.S`) takes
//! |x| clamped to 3.925 (at and beyond which the result rounds to 1), evaluates
//! `a + a·p(a²)` below |x| = 0.921875 and `1 - exp(-(a + a·q(a)))` above, with MLAS's own
//! polynomial `exp`, and copies the sign back. NaN stays NaN (as onnxruntime's kernels give
//! it).
//!
//! Accuracy against the exact functions in f64 (checked in the tests below over a dense grid on
//! [-40, 40], every binade from the smallest subnormal to the largest float, ±inf, NaN):
//! - sigmoid: within 2e-7 absolute (measured 1.6e-7, near x = 16.4); it reaches 0 below about
//!   -17.3, where the exact value is under 1e-7, so it has no relative accuracy there;
//! - tanh: within 3e-7 absolute (measured 2.4e-7, near |x| = 7) and 4 ulp relative wherever
//!   |tanh x| ≥ 1e-35 (closer to 0 the intermediate `x·p` is subnormal and loses bits); exact
//!   sign and signed zeros; near the ±9 clamp it can overshoot ±1 by one ulp;
//! - erf: within 6e-8 absolute and 2 ulp relative wherever |erf x| ≥ 1e-30; exact sign and
//!   signed zeros; ±1 at ±inf.
//!
//! The ONNX backend tests allow 1e-3 relative plus 1e-7 absolute.
//!
//! # Execution
//! The slice functions run one loop that LLVM vectorizes: compiled for AVX2+FMA when the CPU
//! has them (detected at run time), else the same arithmetic in portable code (`mul_add` is
//! then libm's exact `fmaf`: same results, slower).

/// `c[0]·t^(n-1) + … + c[n-1]` by Horner's rule with fused multiply-adds, in MLAS's order.
// The exp reduction MLAS uses (in its erf and softmax kernels): k = round(x / ln 2) by the
// ROUNDER trick, f = x - k ln 2 in two parts (hi + lo), exp(f) by the EXP polynomial.
// MLAS spells LOG2_RECIPROCAL 1.44269504088896341, which rounds to this same f32.
const LOG2_RECIPROCAL: f32 = std::f32::consts::LOG2_E;
#[allow(clippy::excessive_precision)]
const LOG2_HI: f32 = -6.93145752e-1;
#[allow(clippy::excessive_precision)]
const LOG2_LO: f32 = -1.42860677e-6;
#[allow(clippy::excessive_precision)]
const EXP: [f32; 7] = [
    1.38319808e-3,
    8.37550033e-3,
    4.16689515e-2,
    1.66664466e-1,
    4.99999851e-1,
    1.0,
    1.0,
];
/// 1.5 * 2^23: adding and subtracting it rounds to an integer.
#[allow(clippy::excessive_precision)]
const ROUNDER: f32 = 1.25829120e+7;

#[inline(always)]
fn horner(t: f32, c: &[f32]) -> f32 {
    c[1..].iter().fold(c[0], |p, &k| t.mul_add(p, k))
}

/// `MlasComputeLogistic` on one value: a rational approximation on `x` clamped to ±18,
/// evaluated with fused multiply-adds, output clamped below at 0; NaN gives NaN.
// Constants spelled as in MLAS (logistic.cpp), so they round to the same f32.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub fn mlas_logistic(x: f32) -> f32 {
    const A9: f32 = 4.37031012579801e-11;
    const A7: f32 = 1.15627324459942e-07;
    const A5: f32 = 6.08574864600143e-05;
    const A3: f32 = 8.51377133304701e-03;
    const A1: f32 = 2.48287947061529e-01;
    const B10: f32 = 6.10247389755681e-13;
    const B8: f32 = 5.76102136993427e-09;
    const B6: f32 = 6.29106785017040e-06;
    const B4: f32 = 1.70198817374094e-03;
    const B2: f32 = 1.16817656904453e-01;
    const B0: f32 = 9.93151921023180e-01;
    let x = x.clamp(-18.0, 18.0);
    let x2 = x * x;
    let p = horner(x2, &[A9, A7, A5, A3, A1]);
    let q = horner(x2, &[B10, B8, B6, B4, B2, B0]);
    let v = (x * p) / q + 0.5;
    // `v` is never -0.0; NaN (from a NaN input) passes.
    if v < 0.0 { 0.0 } else { v }
}

/// `MlasComputeTanh` on one value: Eigen's odd rational approximation on `x` clamped to ±9,
/// evaluated with fused multiply-adds; NaN gives NaN.
// Constants spelled as in MLAS (tanh.cpp).
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub fn mlas_tanh(x: f32) -> f32 {
    const A13: f32 = -2.76076847742355e-16;
    const A11: f32 = 2.00018790482477e-13;
    const A9: f32 = -8.60467152213735e-11;
    const A7: f32 = 5.12229709037114e-08;
    const A5: f32 = 1.48572235717979e-05;
    const A3: f32 = 6.37261928875436e-04;
    const A1: f32 = 4.89352455891786e-03;
    const B6: f32 = 1.19825839466702e-06;
    const B4: f32 = 1.18534705686654e-04;
    const B2: f32 = 2.26843463243900e-03;
    const B0: f32 = 4.89352518554385e-03;
    let x = x.clamp(-9.0, 9.0);
    let x2 = x * x;
    let p = horner(x2, &[A13, A11, A9, A7, A5, A3, A1]);
    let q = horner(x2, &[B6, B4, B2, B0]);
    (x * p) / q
}

/// `MlasComputeErf` on one value (see the module doc). Every step is the kernel's own, in
/// its order, so the vectorized loop gives onnxruntime's bits.
// Constants spelled as in MLAS (erf.cpp).
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub fn mlas_erf(x: f32) -> f32 {
    const UPPER_ABS: f32 = 3.925;
    const SPLIT: f32 = 0.921875;
    const SMALL: [f32; 6] = [
        -5.99104969e-4,
        4.99339588e-3,
        -2.67667342e-2,
        1.12818025e-1,
        -3.76124859e-1,
        1.28379151e-1,
    ];
    const BIG: [f32; 7] = [
        1.72948930e-5,
        -3.83208680e-4,
        3.88393435e-3,
        -2.42545605e-2,
        1.06777847e-1,
        6.34846687e-1,
        1.28717512e-1,
    ];
    const EXP_LOWER: f32 = -88.3762626647949;
    let sign = x.to_bits() & 0x8000_0000;
    let a = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    // NaN fails the comparison and passes through.
    let a = if a > UPPER_ABS { UPPER_ABS } else { a };
    let big = a >= SPLIT;
    // Both halves are evaluated on every lane (the vector kernel's form); the half not taken
    // sees 0 and contributes the bits of +0.
    let small = if big {
        0.0
    } else {
        horner(a * a, &SMALL).mul_add(a, a)
    };
    let b = if big { a } else { 0.0 };
    let r = -horner(b, &BIG).mul_add(b, b);
    let r = if r < EXP_LOWER { EXP_LOWER } else { r };
    let t = LOG2_RECIPROCAL.mul_add(r, ROUNDER) - ROUNDER;
    let f = t.mul_add(LOG2_HI, r);
    let f = t.mul_add(LOG2_LO, f);
    let p = horner(f, &EXP);
    // SAFETY: `t` is an integer in [-128, 0]: `r` lies in [EXP_LOWER, 0] (and is far above
    // EXP_LOWER for |x| <= UPPER_ABS), so the conversion is in range.
    let k = unsafe { t.to_int_unchecked::<i32>() };
    let pow2 = f32::from_bits(((k + 127) << 23) as u32);
    let y = 1.0 - p * pow2;
    f32::from_bits(y.to_bits() | small.to_bits() | sign)
}

#[inline(always)]
fn map_into(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

#[inline(always)]
fn map_inplace(xs: &mut [f32], f: impl Fn(f32) -> f32) {
    for x in xs.iter_mut() {
        *x = f(*x);
    }
}

/// Whether the AVX2+FMA loops can run (the detection is cached by std).
#[inline]
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$into(src, dst)` (writes `f(src[i])` to `dst[i]` over the shorter length) and
/// `$inplace(xs)` for one scalar function, dispatched to an AVX2+FMA build of the same loop.
macro_rules! vectorized {
    ($f:ident, $into:ident, $inplace:ident, $into_fma:ident, $inplace_fma:ident) => {
        #[doc = concat!("[`", stringify!($f), "`] of each `src[i]` into `dst[i]`.")]
        pub fn $into(src: &[f32], dst: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            if has_fma() {
                // SAFETY: the CPU supports the features the function is compiled for.
                unsafe { $into_fma(src, dst) };
                return;
            }
            map_into(src, dst, $f);
        }

        #[doc = concat!("[`", stringify!($f), "`] of each value, in place.")]
        pub fn $inplace(xs: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            if has_fma() {
                // SAFETY: as above.
                unsafe { $inplace_fma(xs) };
                return;
            }
            map_inplace(xs, $f);
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $into_fma(src: &[f32], dst: &mut [f32]) {
            map_into(src, dst, $f);
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $inplace_fma(xs: &mut [f32]) {
            map_inplace(xs, $f);
        }
    };
}

vectorized!(
    mlas_logistic,
    sigmoid_into,
    sigmoid_inplace,
    sigmoid_into_fma,
    sigmoid_inplace_fma
);
vectorized!(
    mlas_tanh,
    tanh_into,
    tanh_inplace,
    tanh_into_fma,
    tanh_inplace_fma
);
vectorized!(
    mlas_erf,
    erf_into,
    erf_inplace,
    erf_into_fma,
    erf_inplace_fma
);

/// `exp(r)` for `r <= 0` (Softmax's `x - max`) with MLAS's exp steps (the ones inside
/// [`mlas_erf`]: Cody-Waite reduction by ln 2, a degree-6 polynomial, scaling by `2^k`), in a
/// form LLVM vectorizes. Within 2 ulp of the exact value (tests) down to `r = -87.33`, where
/// exp reaches the smallest normal float; below that, and at -inf, it gives 0 (the exact
/// value is under 1.2e-38). NaN gives NaN. Positive `r` is outside its domain.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub fn exp_nonpositive(r: f32) -> f32 {
    // ln(2^-126): 2^k below it would need a subnormal scale.
    const LOWER: f32 = -87.336_54;
    let under = r < LOWER;
    // NaN fails the comparison and passes through.
    let c = if under { LOWER } else { r };
    // t + ROUNDER holds k = round(c / ln 2) in its low mantissa bits (k in [-126, 0]).
    let biased = LOG2_RECIPROCAL.mul_add(c, ROUNDER);
    let t = biased - ROUNDER;
    let f = t.mul_add(LOG2_HI, c);
    let f = t.mul_add(LOG2_LO, f);
    let p = horner(f, &EXP);
    // (k + 127) << 23 is 2^k: the bits above the low 9 of `biased + 127` shift out.
    let pow2 = f32::from_bits(biased.to_bits().wrapping_add(127) << 23);
    let y = p * pow2;
    if under { 0.0 } else { y }
}

/// Softmax of each row of `n` values of `data` in place: `exp(x - max) / Σ exp(x - max)`
/// with [`exp_nonpositive`], the sum taken in row order.
pub fn softmax_rows(data: &mut [f32], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { softmax_rows_fma(data, n) };
        return;
    }
    softmax_rows_portable(data, n);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_rows_fma(data: &mut [f32], n: usize) {
    softmax_rows_portable(data, n);
}

#[inline(always)]
fn softmax_rows_portable(data: &mut [f32], n: usize) {
    if n == 0 {
        return;
    }
    for row in data.chunks_exact_mut(n) {
        let m = row
            .iter()
            .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        map_inplace(row, |x| exp_nonpositive(x - m));
        let s: f32 = row.iter().fold(0.0, |s, &x| s + x);
        map_inplace(row, |x| x / s);
    }
}

/// GELU in the erf form exporters spell out node by node, `Div(x, div)`, `Erf`,
/// `Add(·, add)`, then `Mul` by `mul` and `Mul` by `x` in either association; [`GeluErf::eval`]
/// rounds every step to f32 as the separate nodes do, so the fused pass gives their bits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GeluErf {
    pub div: f32,
    pub add: f32,
    pub mul: f32,
    /// `x * ((erf + add) * mul)` when true, `(x * (erf + add)) * mul` when false.
    pub scale_first: bool,
}

impl GeluErf {
    #[inline(always)]
    pub fn eval(&self, x: f32) -> f32 {
        let u = mlas_erf(x / self.div) + self.add;
        if self.scale_first {
            x * (u * self.mul)
        } else {
            (x * u) * self.mul
        }
    }

    /// [`GeluErf::eval`] of each value, in place (vectorized like the functions above).
    pub fn apply_inplace(&self, xs: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { self.apply_inplace_fma(xs) };
            return;
        }
        map_inplace(xs, |x| self.eval(x));
    }

    /// [`GeluErf::eval`] of each `src[i]` into `dst[i]`.
    pub fn apply_into(&self, src: &[f32], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_fma() {
            // SAFETY: as above.
            unsafe { self.apply_into_fma(src, dst) };
            return;
        }
        map_into(src, dst, |x| self.eval(x));
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn apply_inplace_fma(&self, xs: &mut [f32]) {
        map_inplace(xs, |x| self.eval(x));
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn apply_into_fma(&self, src: &[f32], dst: &mut [f32]) {
        map_into(src, dst, |x| self.eval(x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs over the whole f32 range: a dense grid on [-40, 40], every power of two from the
    /// smallest subnormal to the largest finite value (and neighbours), both signs, ±0, ±inf.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (0..=80_000).map(|i| -40.0 + i as f32 * 1e-3).collect();
        let mut bits = f32::from_bits(1);
        while bits.is_finite() {
            for x in [bits, f32::from_bits(bits.to_bits() + 1), bits * 1.7] {
                v.push(x);
                v.push(-x);
            }
            bits *= 2.0;
        }
        v.extend([
            0.0,
            -0.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        v.extend([f32::MIN_POSITIVE, -f32::MIN_POSITIVE, 1e-40, -1e-40, 1e-45]);
        v
    }

    fn ulps(a: f32, b: f32) -> u32 {
        // Same sign by construction where this is used.
        a.to_bits().abs_diff(b.to_bits())
    }

    /// Keeps the largest `err` seen, with the input where it happened.
    fn track<T: PartialOrd>(worst: &mut (T, f32), err: T, x: f32) {
        if err > worst.0 {
            *worst = (err, x);
        }
    }

    #[test]
    fn sigmoid_within_2e7_absolute_of_exact() {
        let mut worst = (0.0f64, 0.0f32);
        for x in inputs() {
            let exact = 1.0 / (1.0 + (-f64::from(x)).exp());
            let got = mlas_logistic(x);
            assert!((0.0..=1.0).contains(&got), "sigmoid({x}) = {got}");
            track(&mut worst, (f64::from(got) - exact).abs(), x);
        }
        assert!(
            worst.0 <= 2e-7,
            "max abs error {:e} at {}",
            worst.0,
            worst.1
        );
        assert_eq!(mlas_logistic(f32::INFINITY), 1.0);
        assert_eq!(mlas_logistic(f32::NEG_INFINITY), 0.0);
        assert_eq!(mlas_logistic(0.0), 0.5);
        assert!(mlas_logistic(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_within_3e7_absolute_and_4_ulp_of_exact() {
        let mut worst_abs = (0.0f64, 0.0f32);
        let mut worst_ulp = (0u32, 0.0f32);
        for x in inputs() {
            let exact = f64::from(x).tanh();
            let got = mlas_tanh(x);
            track(&mut worst_abs, (f64::from(got) - exact).abs(), x);
            // MLAS's tanh overshoots ±1 by one ulp near the clamp (as onnxruntime's does).
            assert!(got.abs() <= 1.0 + f32::EPSILON, "tanh({x}) = {got}");
            if x != 0.0 {
                assert_eq!(got.is_sign_negative(), x < 0.0, "sign of tanh({x}) = {got}");
            }
            // Relative accuracy where the exact result is below 1 and `x·p` (p ≈ 0.005) is
            // still a normal float (below that, the intermediate loses bits as a subnormal).
            let ef = exact as f32;
            if ef.abs() >= 1e-35 && ef.abs() < 1.0 {
                track(&mut worst_ulp, ulps(got, ef), x);
            }
        }
        let (e, at) = worst_abs;
        assert!(e <= 3e-7, "max abs error {e:e} at {at}");
        let (u, at) = worst_ulp;
        assert!(u <= 4, "max {u} ulp at {at}");
        assert_eq!(mlas_tanh(f32::INFINITY), 1.0);
        assert_eq!(mlas_tanh(f32::NEG_INFINITY), -1.0);
        assert_eq!(mlas_tanh(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(mlas_tanh(-0.0).to_bits(), (-0.0f32).to_bits());
        assert!(mlas_tanh(f32::NAN).is_nan());
    }

    #[test]
    fn erf_within_6e8_absolute_and_2_ulp_of_exact() {
        let mut worst_abs = (0.0f64, 0.0f32);
        let mut worst_ulp = (0u32, 0.0f32);
        for x in inputs() {
            let exact = libm::erf(f64::from(x));
            let got = mlas_erf(x);
            track(&mut worst_abs, (f64::from(got) - exact).abs(), x);
            assert!(got.abs() <= 1.0, "erf({x}) = {got}");
            assert_eq!(
                got.is_sign_negative(),
                x.is_sign_negative(),
                "erf({x}) = {got}"
            );
            let ef = exact as f32;
            if ef.abs() >= 1e-30 {
                track(&mut worst_ulp, ulps(got, ef), x);
            }
        }
        let (e, at) = worst_abs;
        assert!(e <= 6e-8, "max abs error {e:e} at {at}");
        let (u, at) = worst_ulp;
        assert!(u <= 2, "max {u} ulp at {at}");
        assert_eq!(mlas_erf(f32::INFINITY), 1.0);
        assert_eq!(mlas_erf(f32::NEG_INFINITY), -1.0);
        assert_eq!(mlas_erf(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(mlas_erf(-0.0).to_bits(), (-0.0f32).to_bits());
        assert!(mlas_erf(f32::NAN).is_nan());
    }

    #[test]
    fn slice_forms_match_the_scalar_function_bit_for_bit() {
        // Odd lengths exercise the vector loops' tails.
        let mut xs = inputs();
        xs.extend([f32::NAN, -f32::NAN]);
        for n in [0, 1, 7, 8, 9, 31, xs.len()] {
            let src = &xs[..n];
            for (into, inplace, f) in [
                (
                    sigmoid_into as fn(&[f32], &mut [f32]),
                    sigmoid_inplace as fn(&mut [f32]),
                    mlas_logistic as fn(f32) -> f32,
                ),
                (tanh_into, tanh_inplace, mlas_tanh),
                (erf_into, erf_inplace, mlas_erf),
            ] {
                let mut a = vec![0.0; n];
                into(src, &mut a);
                let mut b = src.to_vec();
                inplace(&mut b);
                for i in 0..n {
                    let want = f(src[i]);
                    assert!(
                        a[i].to_bits() == want.to_bits() && b[i].to_bits() == want.to_bits()
                            || want.is_nan() && a[i].is_nan() && b[i].is_nan(),
                        "f({}) = {} / {} vs {}",
                        src[i],
                        a[i],
                        b[i],
                        want
                    );
                }
            }
        }
    }

    #[test]
    fn exp_nonpositive_is_within_2_ulp_and_flushes_below_the_normal_range() {
        let mut worst = (0u32, 0.0f32);
        // A dense grid on [-87.33, 0] and every binade of small magnitudes.
        let mut xs: Vec<f32> = (0..=873_300).map(|i| -(i as f32) * 1e-4).collect();
        let mut t = f32::from_bits(1);
        while t < 87.0 {
            xs.push(-t);
            t *= 1.5;
        }
        for &x in &xs {
            let got = exp_nonpositive(x);
            let want = f64::from(x).exp() as f32;
            let u = ulps(got, want);
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 2, "max {} ulp at {}", worst.0, worst.1);
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
        assert_eq!(exp_nonpositive(-87.4), 0.0);
        assert_eq!(exp_nonpositive(-1e30), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_rows_match_f64() {
        let row_sets: Vec<Vec<f32>> = vec![
            (0..16).map(|i| (i as f32 * 0.37).sin() * 9.0).collect(),
            (0..33).map(|i| i as f32 * -3.0).collect(),
            vec![f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, -2.0, 0.5],
            vec![-1e30, 3.0, 3.0, -3.4e38, 0.0, 1.0, 2.0],
            vec![5.0],
        ];
        for row in row_sets {
            let n = row.len();
            let mut data: Vec<f32> = row.iter().chain(&row).copied().collect();
            softmax_rows(&mut data, n);
            let m = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
            let e: Vec<f64> = row.iter().map(|&x| (f64::from(x) - m).exp()).collect();
            let s: f64 = e.iter().sum();
            for (i, &got) in data.iter().enumerate() {
                let want = e[i % n] / s;
                // x - max rounded to f32 moves exp by up to |x - max| half-ulps; then a few
                // ulp for exp, the sum and the division.
                let shift = (f64::from(row[i % n]) - m).abs().min(1e3) * 6e-8;
                assert!(
                    (f64::from(got) - want).abs() <= (shift + 4e-7) * want + 1e-38,
                    "{row:?}[{}]: {got} vs {want}",
                    i % n
                );
            }
        }
        // A row of -inf has no maximum to subtract: NaN, as exp(-inf - -inf) is.
        let mut data = vec![f32::NEG_INFINITY; 3];
        softmax_rows(&mut data, 3);
        assert!(data.iter().all(|v| v.is_nan()));
    }
}
