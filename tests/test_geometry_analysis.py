"""The full analysis (memgeo.geometry.analysis.analyze): exact limits, the oracle, its parts,
backends, threads, precisions and degenerate input."""
import numpy as np
import pytest
import torch
from geometry_cases import gauss_manifolds, mc_tol, one_torch_thread, planted  # noqa: F401

from memgeo.geometry import ENGINE_VERSION, analyze
from memgeo.geometry.capacity import capacity_from_points, sample_t
from memgeo.geometry.centers import find_center_subspace
from memgeo.geometry.preprocess import preprocess
from memgeo.geometry.theory import alpha_points

# analyze's numbers for two fixed inputs, as computed by ENGINE_VERSION 2 (memgeo/geometry.py at
# 9004e6a, and unchanged by the split into a package). A change beyond rounding must bump
# ENGINE_VERSION (cached results are keyed by it) and these numbers.
PINNED = [
    (lambda: gauss_manifolds(6, 10, 100, seed=1), dict(n_t=50, seed=7),
     dict(capacity=0.4477065545673627, radius=0.8433803477336032, dimension=4.380389055328137,
          center_correlation=0.1996053176373569, K=1, residual_correlation=0.2457078399187989)),
    (lambda: planted(12, 2, seed=7), dict(n_t=80, seed=2, kappa=0.5),
     dict(capacity=0.4406652821073915, radius=0.5071819893505097, dimension=3.3462557328432325,
          center_correlation=0.41047560199525557, K=2, residual_correlation=0.14642856406575963)),
]


@pytest.mark.parametrize("case", range(len(PINNED)))
def test_pinned_numbers(case):
    make, kw, expected = PINNED[case]
    assert ENGINE_VERSION == 2
    got = analyze(make(), **kw).as_dict()
    for key, val in expected.items():
        assert got[key] == pytest.approx(val, rel=1e-12, abs=1e-15), key


@pytest.mark.parametrize("kappa", [0.0, 1.0])
def test_analyze_single_points_give_alpha0(kappa):
    rng = np.random.default_rng(4)
    pts = [rng.standard_normal((1, 60)) for _ in range(40)]
    res = analyze(pts, kappa=kappa, n_t=500, seed=1, return_per_t=True)
    F = np.concatenate([p.F for p in res.per_t])
    assert abs(res.capacity / alpha_points(kappa) - 1) < mc_tol(F)
    np.testing.assert_array_equal(res.per_manifold.radius, 0.0)
    np.testing.assert_array_equal(res.per_manifold.dimension, 0.0)
    assert list(res.per_manifold.D) == [1] * 40


def test_analyze_gaussian_clouds_near_simplex():
    # M i.i.d. Gaussian points in N >> M dims are close to a regular simplex: alpha ~ 2/M
    # (the points sit at radius ~ sqrt((M-1) P/(P-1)) around centers of unit norm)
    ms = gauss_manifolds(30, 20, 2000, seed=0, center_scale=0.0)
    res = analyze(ms, n_t=200, seed=0)
    assert res.capacity == pytest.approx(2 / 20, rel=0.06)
    d = res.as_dict()
    assert set(d) >= {"capacity", "radius", "dimension", "center_correlation", "K"}
    assert isinstance(d["K"], int) and d["P"] == 30
    assert res.per_manifold.capacity.shape == (30,)
    assert 1 / np.mean(1 / res.per_manifold.capacity) == pytest.approx(res.capacity)
    assert res.radius == pytest.approx(res.per_manifold.radius.mean())
    assert res.dimension == pytest.approx(res.per_manifold.dimension.mean())


def test_analyze_is_preprocess_then_capacity_from_points():
    # the call path: steps 1-3, then T per manifold from (seed, i), then steps 4-5
    ms = planted(8, 2, seed=3) + [np.random.default_rng(1).standard_normal((1, 400))]
    res = analyze(ms, n_t=60, seed=4, kappa=0.3, num_threads=1, return_per_t=True)
    pre = preprocess(ms, seed=4, num_workers=1)
    T = sample_t([s.shape[0] for s in pre.S], 60, 4)
    parts = capacity_from_points(list(pre.S), T=T, kappa=0.3)
    np.testing.assert_array_equal(res.per_manifold.capacity, parts["capacity"])
    np.testing.assert_array_equal(res.per_manifold.radius, parts["radius"])
    np.testing.assert_array_equal(res.per_manifold.dimension, parts["dimension"])
    for p, t in zip(res.per_t, T):
        np.testing.assert_array_equal(p.T, t)
    assert res.capacity == parts["capacity_total"]
    assert (res.K, res.center_correlation) == (pre.centers.K, pre.centers.center_correlation)
    np.testing.assert_array_equal(res.per_manifold.center_norm, pre.center_norm)


@pytest.mark.parametrize("P,K0", [(10, 2), (20, 3)])
def test_center_removal_in_the_analysis(P, K0):
    ms = planted(P, K0, seed=P + K0)
    res = analyze(ms, n_t=20, seed=0)
    assert res.K == K0
    assert res.residual_correlation < 0.6 * res.center_correlation
    C = np.stack([m.mean(0) for m in ms])
    cs = find_center_subspace(C - C.mean(0), seed=0)
    assert res.center_correlation == pytest.approx(cs.center_correlation, rel=1e-9)
    assert res.residual_correlation == pytest.approx(cs.residual_correlation, rel=1e-6)
    assert res.diagnostics["residual_by_K"][K0 - 1] == pytest.approx(res.residual_correlation)
    assert analyze(planted(3, 1, seed=1), n_t=20, min_rank=0).K == 0


@pytest.mark.parametrize("kappa", [0.0, 0.5])
def test_analyze_batched_matches_cvxopt_oracle(kappa):
    ms = gauss_manifolds(4, 12, 300, seed=3) + [np.random.default_rng(9).standard_normal((1, 300))]
    a = analyze(ms, kappa=kappa, n_t=40, seed=2, return_per_t=True)
    b = analyze(ms, kappa=kappa, n_t=40, seed=2, return_per_t=True, solver="cvxopt")
    for pa, pb in zip(a.per_t, b.per_t):
        np.testing.assert_array_equal(pa.T, pb.T)
        np.testing.assert_allclose(pa.F, pb.F, atol=1e-8, rtol=1e-8)
        np.testing.assert_allclose(pa.anchors, pb.anchors, atol=1e-5)
    assert a.capacity == pytest.approx(b.capacity, rel=1e-8)
    assert a.radius == pytest.approx(b.radius, rel=1e-5)
    assert a.dimension == pytest.approx(b.dimension, rel=1e-5)
    assert a.K == b.K and a.center_correlation == b.center_correlation


def test_deterministic_given_seed():
    ms = gauss_manifolds(6, 10, 100, seed=1)
    a = analyze(ms, n_t=50, seed=7)
    b = analyze([torch.from_numpy(m) for m in ms], n_t=50, seed=7)
    assert a.as_dict() == b.as_dict()
    for f in ("capacity", "radius", "dimension"):
        np.testing.assert_array_equal(getattr(a.per_manifold, f), getattr(b.per_manifold, f))
    c = analyze(ms, n_t=50, seed=8)
    assert c.capacity != a.capacity


def test_float32_input_gives_the_numbers_of_its_float64_values():
    # (was: finite capacities only) float32 features are used exactly, so the analysis of
    # float32 input equals that of the same values in float64, to the last bit
    rng = np.random.default_rng(2)
    ms = [rng.standard_normal((M, 80)).astype(np.float32) + rng.standard_normal(80).astype(
        np.float32) for M in (1, 5, 30, 12)]
    r32 = analyze(ms, n_t=64, seed=0, return_per_t=True)
    r64 = analyze([m.astype(np.float64) for m in ms], n_t=64, seed=0, return_per_t=True)
    assert r32.as_dict() == r64.as_dict()
    for f in ("capacity", "radius", "dimension", "center_norm"):
        np.testing.assert_array_equal(getattr(r32.per_manifold, f), getattr(r64.per_manifold, f))
    for a, b in zip(r32.per_t, r64.per_t):
        np.testing.assert_array_equal(a.F, b.F)
    assert list(r32.per_manifold.n_points) == [1, 5, 30, 12]
    assert np.all(np.isfinite(r32.per_manifold.capacity))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tensors_are_analysed_as_float32(dtype):
    # bfloat16 has no numpy type: it is converted to float32, which holds it exactly
    gen = torch.Generator().manual_seed(0)
    ms = [(torch.randn(6, 30, generator=gen) + i).to(dtype) for i in range(4)]
    a = analyze(ms, n_t=30, seed=1)
    b = analyze([m.float() for m in ms], n_t=30, seed=1)
    assert a.as_dict() == b.as_dict()


@pytest.mark.parametrize("center_removal", [True, False])
def test_identical_classes_are_refused_in_every_precision(center_removal):
    # five copies of one point cloud: every center is the global mean. In float64 the centered
    # centers are rounding noise (~1e-16) and the old check, relative to them, let the
    # analysis return capacity 0.052 and radius 4e15; float32 input gave exact zeros and an
    # error. Both precisions must give the same clear error.
    X = np.random.default_rng(0).standard_normal((20, 50))
    messages = []
    for dtype in (np.float64, np.float32):
        with pytest.raises(ValueError, match="center coincides with the global mean") as e:
            analyze([X.astype(dtype)] * 5, n_t=50, center_removal=center_removal)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    with pytest.raises(ValueError, match="manifold 0: its center coincides"):
        analyze(torch.from_numpy(np.stack([X] * 3)), n_t=10)
    # identical classes among distinct ones are ordinary manifolds
    Y = np.random.default_rng(1).standard_normal((20, 50)) + 1.0
    res = analyze([X, X, Y], n_t=20)
    assert np.all(np.isfinite(res.per_manifold.radius)) and res.radius < 1e3


def test_a_class_at_the_global_mean_is_refused():
    rng = np.random.default_rng(0)
    c = [rng.standard_normal((4, 10)) for _ in range(2)]
    sym = [c[0] + 5, -(c[0] + 5), c[1] - c[1].mean(0)]
    with pytest.raises(ValueError, match="manifold 2: its center coincides with the global"):
        analyze(sym, center_removal=False)


@pytest.mark.parametrize("backend", ["numba", "numpy", "torch"])
def test_backends_give_the_same_geometry(backend):
    # "numba" is what "auto" runs here (bitwise); the numpy twins and the torch solver agree
    # to ~1e-6: the two center searches stop at gradient norm 1e-6 at slightly different
    # points of a flat landscape (planted centers: a well-defined center subspace)
    ms = planted(12, 2, seed=7)
    ref = analyze(ms, n_t=80, seed=2, return_per_t=True)
    r = analyze(ms, n_t=80, seed=2, return_per_t=True, backend=backend)
    assert r.K == ref.K == 2
    if backend == "numba":
        assert r.as_dict() == ref.as_dict()
    for key, val in ref.as_dict().items():
        assert r.as_dict()[key] == pytest.approx(val, rel=5e-6, abs=1e-12), key
    for a, b in zip(r.per_t, ref.per_t):
        np.testing.assert_allclose(a.F, b.F, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="backend must be one of"):
        analyze(ms, backend="gpu")


def test_results_do_not_depend_on_the_thread_count():
    # the per-manifold work is split over threads. The point sets are bitwise the same; the
    # solver batches (and pads) the T of several manifolds together, so a batch of another
    # composition can round differently in the last bit, never more
    same = [np.random.default_rng(i).standard_normal((10, 60)) + 0.3 * i for i in range(6)]
    mixed = [np.random.default_rng(i).standard_normal((8 + i % 5, 60)) + 0.3 * i
             for i in range(9)]
    rtol = 1e-13
    for ms in (same, mixed):
        ref = analyze(ms, n_t=40, seed=3, num_threads=1, return_per_t=True)
        for n in (2, 3, 9, 16):
            r = analyze(ms, n_t=40, seed=3, num_threads=n, return_per_t=True)
            for key, val in ref.as_dict().items():
                assert r.as_dict()[key] == pytest.approx(val, rel=rtol, abs=1e-15), (n, key)
            for a, b in zip(r.per_t, ref.per_t):
                np.testing.assert_allclose(a.F, b.F, rtol=rtol, atol=1e-14)
                np.testing.assert_allclose(a.anchors, b.anchors, rtol=rtol, atol=1e-14)


def test_analyze_restores_torch_and_blas_threads():
    # the thread pool limits BLAS and torch to one thread per worker; afterwards both are back
    # (torch's count is OpenMP's: a wrong restore order used to leave torch at 1 thread)
    from threadpoolctl import threadpool_info
    ms = gauss_manifolds(4, 6, 30, seed=3)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        analyze(ms, n_t=10)                          # loads every BLAS the kernels use
        before = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
        for nt in (None, 1, 2, 3):
            analyze(ms, n_t=10, num_threads=nt)
            assert torch.get_num_threads() == 2, nt
            assert {i["filepath"]: i["num_threads"] for i in threadpool_info()} == before, nt
    finally:
        torch.set_num_threads(old)


def test_scale_invariance_and_extreme_magnitudes():
    ms = gauss_manifolds(4, 6, 40, seed=5)
    ref = analyze(ms, n_t=60, seed=1)
    for f in (2.0 ** 400, 1e150, 1e-150, 3.7):
        r = analyze([m * f for m in ms], n_t=60, seed=1, num_threads=1)
        for key, val in ref.as_dict().items():
            assert r.as_dict()[key] == pytest.approx(val, rel=1e-6, abs=1e-12), (f, key)
