"""What fills a k×k window: the conditional patch Gaussian of PDA, a marginal sampler, a constant fill.

PDA (paper Section 2, Algorithm 1 line 7) replaces a k×k window ``w`` by samples from a Gaussian
conditioned on the rest ``o`` of the l×l patch centred on it; efficient PDA (Algorithm 2 line 5) uses
that Gaussian's mean.  With the patch Gaussian N(μ, Σ)::

    mean = μ_w + Σ_wo Σ_oo⁻¹ (x_o − μ_o)          cov = Σ_ww − Σ_wo Σ_oo⁻¹ Σ_ow

computed with Cholesky solves (never an explicit inverse).  At the image border two rules exist
(``border=``): ``"clip"`` (default) clips the outer patch where it sticks out of the image and conditions on
the in-image pixels only (the marginal of the joint Gaussian: exact); ``"shift"`` is what the original PDA
code does (``_get_surr_patch``): the l×l patch is shifted to lie inside the image, so the window is no
longer at its centre, and the window is conditioned on the rest of that shifted patch.
Because the Gaussian does not depend on the location, the gain Σ_wo Σ_oo⁻¹ and the Cholesky factor L of
the conditional covariance depend only on how the outer patch is clipped (or, with border="shift", where
the window lies in the shifted patch); they are computed once per such case and cached, then all windows of a case get their means in one matrix product and their
samples as ``mean + L z`` in one (triangular) product.  The paper's "Sampling Time" paragraph measured
about 5 minutes for one image's 501,760 samples when this is done per window.

Every sampler ("imputer") is a `WindowImputer` (sampling/base.py), the one contract the shared window
loop uses (pda_repro.methods.windows.Imputation says which of its outputs a method evaluates)::

    k, channels, l                                      window size, channel count, outer patch (or None)
    check(x)                                            ValueError naming the values if x does not fit
    fingerprint()                                       what changes its values (checkpoint identity)
    sample_at(x, rows, cols, n, rng) -> (W, n, C, k, k) float32   n draws per window (rows[i], cols[i])
    mean_at(x, rows, cols)          -> (W, C, k, k) float32      conditional mean / fill value
    sample(x, n, rng, stride=1)     -> (n_rows, n_cols, n, C, k, k)   all windows
    conditional_means(x, stride=1)  -> (n_rows, n_cols, C, k, k)

rows/cols are window top-left corners.  Precision: the gain and factors are always computed in float64;
``dtype=np.float32`` (default, what the window loop feeds the network; half the memory traffic of the
dominant normal draw and triangular product) applies them in float32 — on 0..255 photos the means differ
from float64 by at most ~5e-4, i.e. ~2e-6 of the largest value, far below 8-bit quantisation — while
``dtype=np.float64`` is exact to rounding (the tests compare it with a brute force at 1e-8).  The two
dtypes draw different normal streams from the same seed.
Randomness comes only from the passed ``numpy.random.Generator``: ``sample_at`` draws all standard
normals of a call in one block of shape (W, n, C·k·k), in the order the windows are given, so the same
seed gives the same samples, and calling it on consecutive chunks with one generator gives the same
samples as one call over all windows (up to float rounding of the differently sized BLAS products).
"""

from pda_repro.sampling.base import WindowImputer, blas_thread_counts, limit_blas_threads
from pda_repro.sampling.gaussian import PatchGaussian
from pda_repro.sampling.marginal import ConstantFill, MarginalSampler

__all__ = [
    "ConstantFill",
    "MarginalSampler",
    "PatchGaussian",
    "WindowImputer",
    "blas_thread_counts",
    "limit_blas_threads",
]
