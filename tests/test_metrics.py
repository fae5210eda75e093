"""Tests of copa.metrics against scikit-image and on known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from skimage import data, transform
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from copa import metrics as M
from copa.errors import CopaError, InvalidSpecError, UnknownNameError


# ---------------------------------------------------------------------------------------------
# fixtures


def _random_pair(n=4, c=3, size=32, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, c, size, size, generator=g, dtype=torch.float64)
    recon = (target + noise * torch.randn(target.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return recon, target


def _astronaut_pair(n=3, size=32, noise=0.05, seed=0):
    """A natural image (skimage's astronaut) resized to size×size, plus noisy copies."""
    img = transform.resize(data.astronaut(), (size, size), anti_aliasing=True).transpose(2, 0, 1)
    target = torch.tensor(img, dtype=torch.float64)[None].repeat(n, 1, 1, 1)
    g = torch.Generator().manual_seed(seed)
    noise_levels = torch.linspace(noise / 4, noise, n, dtype=torch.float64)[:, None, None, None]
    recon = (target + noise_levels * torch.randn(target.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return recon, target


PAIRS = {"random": _random_pair, "astronaut": _astronaut_pair, "astronaut-grey": lambda: tuple(
    t.mean(1, keepdim=True) for t in _astronaut_pair())}


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return structural_similarity(
        a.numpy(), b.numpy(), data_range=1, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, channel_axis=0,
    )


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """A TORCH_HOME with no weights, where any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    M._lpips_network.cache_clear()
    yield tmp_path / "torch"
    M._lpips_network.cache_clear()


# ---------------------------------------------------------------------------------------------
# MSE, PSNR, SSIM against scikit-image


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_mse_and_psnr_match_skimage(kind):
    recon, target = PAIRS[kind]()
    got_mse, got_psnr = M.mse(recon, target), M.psnr(recon, target)
    assert got_mse.shape == got_psnr.shape == (recon.shape[0],)
    assert got_mse.dtype == got_psnr.dtype == torch.float64
    for i in range(recon.shape[0]):
        a, b = recon[i].numpy(), target[i].numpy()
        assert got_mse[i].item() == pytest.approx(mean_squared_error(b, a), rel=1e-12)
        assert got_psnr[i].item() == pytest.approx(peak_signal_noise_ratio(b, a, data_range=1), rel=1e-12)


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_ssim_matches_skimage(kind):
    # Both average the SSIM map over the valid region (border of 5 px cropped), use the same
    # 11×11 Gaussian window and population covariances, so in float64 they agree to rounding
    # (~1e-15 measured). torchmetrics' own reduction instead averages over the reflect-padded
    # border too and differs from scikit-image by up to ~0.03 on 32×32 images; see
    # test_ssim_crops_the_border.
    recon, target = PAIRS[kind]()
    got = M.ssim(recon, target)
    assert got.shape == (recon.shape[0],) and got.dtype == torch.float64
    expected = [_skimage_ssim(recon[i], target[i]) for i in range(recon.shape[0])]
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)


def test_ssim_of_float32_input_agrees_with_float64():
    recon, target = _astronaut_pair()
    np.testing.assert_allclose(
        M.ssim(recon.float(), target.float()).numpy(), M.ssim(recon, target).numpy(), atol=1e-6
    )


def test_ssim_crops_the_border():
    """The uncropped torchmetrics mean is measurably different; we must not be returning it."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    recon, target = _astronaut_pair()
    uncropped = structural_similarity_index_measure(
        recon, target, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, reduction="none"
    )
    assert (M.ssim(recon, target) - uncropped).abs().max() > 1e-3


def test_ssim_rejects_images_smaller_than_the_window():
    x = torch.rand(2, 3, 10, 32)
    with pytest.raises(InvalidSpecError, match=r"10×32.*11×11"):
        M.ssim(x, x)
    assert M.ssim(torch.rand(1, 1, 11, 11), torch.rand(1, 1, 11, 11)).shape == (1,)


# ---------------------------------------------------------------------------------------------
# known answers, clamping, input checks


def test_identical_images():
    x = _astronaut_pair()[1]
    assert torch.equal(M.mse(x, x), torch.zeros(3, dtype=torch.float64))
    assert torch.isinf(M.psnr(x, x)).all() and (M.psnr(x, x) > 0).all()
    np.testing.assert_allclose(M.ssim(x, x).numpy(), 1.0, atol=1e-12)


def test_psnr_known_value():
    x = torch.zeros(1, 1, 4, 4)
    y = torch.full((1, 1, 4, 4), 0.1)  # mse 0.01 → 20 dB
    assert M.psnr(x, y).item() == pytest.approx(20.0, abs=1e-6)


def test_inputs_are_clamped_to_unit_range():
    target = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    target[:, :, :4] = 1.0
    target[:, :, 4:8] = 0.0
    recon = target.clone()
    recon[:, :, :4] = 1.7  # overshoots, displayed as 1
    recon[:, :, 4:8] = -0.4  # undershoots, displayed as 0
    assert torch.equal(M.mse(recon, target), torch.zeros(2, dtype=torch.float64))
    assert torch.isinf(M.psnr(recon, target)).all()
    np.testing.assert_allclose(M.ssim(recon, target).numpy(), 1.0, atol=1e-12)
    # and the clamping applies to the target too
    assert M.mse(target, recon).eq(0).all()
    # an out-of-range value that clamps to a different value still counts
    recon2 = target.clone()
    recon2[:, 0, 10, 10] = 2.0
    target2 = target.clone()
    target2[:, 0, 10, 10] = 0.5
    np.testing.assert_allclose(M.mse(recon2, target2).numpy(), 0.25 / (3 * 16 * 16))


@pytest.mark.parametrize("fn", [M.mse, M.psnr, M.ssim, M.match_pairs, M.lpips])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(InvalidSpecError, match=r"\(2, 3, 32, 32\).*\(2, 3, 32, 31\)"):
        fn(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 31))


def test_non_image_tensors_are_rejected():
    with pytest.raises(InvalidSpecError, match=r"N×C×H×W.*\(3, 32, 32\)"):
        M.mse(torch.rand(3, 32, 32), torch.rand(3, 32, 32))
    with pytest.raises(InvalidSpecError, match="torch.Tensor"):
        M.mse(np.zeros((1, 1, 4, 4)), torch.zeros(1, 1, 4, 4))


# ---------------------------------------------------------------------------------------------
# labels and pairing


def test_label_accuracy():
    assert M.label_accuracy([1, 2, 3, 4], torch.tensor([1, 2, 0, 4])) == 0.75
    assert M.label_accuracy(torch.tensor([[5]]), [5]) == 1.0
    assert M.label_accuracy(None, [1, 2]) is None
    assert M.label_accuracy([1, 2], None) is None
    with pytest.raises(InvalidSpecError, match="3 predicted labels but 2 true labels"):
        M.label_accuracy([1, 2, 3], [1, 2])


def test_match_pairs_recovers_a_shuffle():
    recon, target = _random_pair(n=7, noise=0.02, seed=3)
    shuffle = torch.tensor([3, 0, 6, 1, 5, 2, 4])  # shuffled[k] = recon[shuffle[k]]
    shuffled = recon[shuffle]
    perm = M.match_pairs(shuffled, target)
    assert perm.dtype == torch.long
    assert torch.equal(perm, torch.argsort(shuffle))
    assert torch.equal(shuffled[perm], recon)


def test_match_pairs_minimises_total_cost_not_greedily():
    # constant images: targets 0.0 and 0.4, reconstructions 0.3 and 0.8.
    # Greedy on the smallest entry pairs target 0.4 with recon 0.3 (0.01) and is left with
    # 0.0↔0.8 (0.64), total 0.65; the optimum is 0.0↔0.3 and 0.4↔0.8, total 0.25.
    target = torch.tensor([0.0, 0.4]).reshape(2, 1, 1, 1).expand(2, 1, 4, 4)
    recon = torch.tensor([0.3, 0.8]).reshape(2, 1, 1, 1).expand(2, 1, 4, 4)
    assert M.match_pairs(recon, target).tolist() == [0, 1]
    assert M.match_pairs(recon.flip(0), target).tolist() == [1, 0]


def test_match_pairs_is_a_permutation_even_when_one_target_attracts_all():
    target = torch.rand(5, 3, 8, 8)
    recon = target[2:3].repeat(5, 1, 1, 1) + 0.01 * torch.rand(5, 3, 8, 8)
    assert sorted(M.match_pairs(recon, target).tolist()) == list(range(5))


def test_match_pairs_single_image_is_identity():
    assert M.match_pairs(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)).tolist() == [0]


# ---------------------------------------------------------------------------------------------
# score_images


def test_score_images_pairs_before_scoring(empty_torch_home):
    target = _random_pair(n=4, seed=5)[1]
    shuffle = torch.tensor([2, 3, 1, 0])  # a derangement: no image stays in place
    true_labels = torch.tensor([10, 11, 12, 13])
    report = M.score_images(
        target[shuffle], target, predicted_labels=true_labels[shuffle], true_labels=true_labels
    )
    assert report["pairing"] == torch.argsort(shuffle).tolist()
    assert report["per_image"]["mse"] == [0.0] * 4
    assert report["per_image"]["psnr"] == [math.inf] * 4
    assert report["mean"]["psnr"] == math.inf
    np.testing.assert_allclose(report["per_image"]["ssim"], 1.0, atol=1e-12)
    assert report["label_accuracy"] == 1.0  # labels followed their images
    # without pairing, labels would all be wrong
    assert M.label_accuracy(true_labels[shuffle], true_labels) == 0.0


def test_score_images_values_are_in_target_order(empty_torch_home):
    recon, target = _astronaut_pair(n=3, noise=0.2)
    shuffle = torch.tensor([1, 2, 0])
    report = M.score_images(recon[shuffle], target, metrics=("mse", "psnr", "ssim"))
    np.testing.assert_allclose(report["per_image"]["mse"], M.mse(recon, target).numpy(), rtol=1e-12)
    np.testing.assert_allclose(report["per_image"]["ssim"], M.ssim(recon, target).numpy(), rtol=1e-12)
    assert report["mean"]["psnr"] == pytest.approx(M.psnr(recon, target).mean().item())
    assert set(report["per_image"]) == {"mse", "psnr", "ssim"}
    assert report["label_accuracy"] is None and report["lpips_missing"] is None


def test_score_images_report_is_json(empty_torch_home):
    recon, target = _random_pair(n=2)
    report = M.score_images(recon, target, predicted_labels=[0, 1], true_labels=[0, 0])
    back = json.loads(json.dumps(report))
    assert back == report
    assert back["label_accuracy"] == 0.5
    perfect = M.score_images(target, target, metrics=["psnr"])
    assert "Infinity" in json.dumps(perfect)
    assert json.loads(json.dumps(perfect))["mean"]["psnr"] == math.inf


def test_score_images_unknown_metric_suggests_close_match():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(UnknownNameError, match=r"'pnsr'.*Did you mean 'psnr'"):
        M.score_images(x, x, metrics=("mse", "pnsr"))


def test_score_images_label_count_mismatch():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(InvalidSpecError, match="3 predicted labels for a batch of 2"):
        M.score_images(x, x, predicted_labels=[1, 2, 3], true_labels=[1, 2], metrics=("mse",))


def test_registry():
    """The default metrics are registered with what the tables need; the tests do not pin the registry's whole
    contents (an extension or a test may register more)."""
    assert set(M.DEFAULT_METRICS) <= set(M.METRICS.names()) and M.DEFAULT_HEADLINE_METRIC in M.DEFAULT_METRICS
    for entry in M.METRICS:
        assert set(entry.meta) >= {"description", "higher_is_better", "source"}
    assert M.METRICS.entry("psnr").meta["higher_is_better"] is True
    assert M.METRICS.entry("lpips").meta["higher_is_better"] is False
    assert M.metric_info("psnr").sign == 1 and M.metric_info("mse").sign == -1
    # registration order is the tables' column order (results/leaderboard.md: PSNR, SSIM, LPIPS, MSE)
    order = M.METRICS.in_registration_order()
    assert [order.index(name) for name in ("psnr", "ssim", "lpips", "mse")] == sorted(
        order.index(name) for name in ("psnr", "ssim", "lpips", "mse"))
    assert M.metric_order(["mse", "unknown", "psnr"]) == ["psnr", "mse", "unknown"]
    assert M.metric_info("psnr").legend and M.metric_info("lpips").needs == "AlexNet weights"
    assert M.metric_info("psnr").heading == "PSNR dB ↑" and M.metric_info("lpips").heading == "LPIPS ↓"
    assert M.metric_info("psnr").digits == 2 and M.metric_info("ssim").digits == 4
    assert M.metric_info("unknown") == M.MetricInfo("unknown", "unknown")  # read back from records: its name
    assert M.metric_info("unknown").heading == "unknown"


@pytest.fixture
def restore_metrics():
    saved = dict(M.METRICS._entries)
    yield
    M.METRICS._entries.clear()
    M.METRICS._entries.update(saved)


def test_register_metric_declares_what_tables_need(restore_metrics):
    @M.register_metric("test_mae", label="MAE", higher_is_better=False, digits=3, description="test")
    def mae(x, y):
        return (x - y).abs().flatten(1).mean(1).double()

    assert M.METRICS.get("test_mae") is mae and M.metric_info("test_mae").heading == "MAE ↓"
    assert M.METRICS.in_registration_order()[-1] == "test_mae"
    x = torch.zeros(2, 3, 16, 16)
    report = M.score_images(x, x + 0.5, metrics=("psnr", "test_mae"))
    assert report["mean"]["test_mae"] == pytest.approx(0.5)
    assert M.check_metric_names(["test_mae"]) == ["test_mae"]
    with pytest.raises(CopaError, match="metric 'psnr' is already registered"):
        M.register_metric("psnr", mae, label="P", higher_is_better=True, digits=2, description="another psnr")


@pytest.mark.parametrize("changes, message", [
    ({"name": "my mae"}, r"metric name 'my mae' is invalid: use a letter, then letters, digits or _"),
    ({"fn": "abs"}, r"metric 'x': fn 'abs' is invalid: expected a function"),
    ({"label": ""}, r"metric 'x': label '' is invalid: expected a non-empty string"),
    ({"higher_is_better": "yes"}, r"metric 'x': higher_is_better 'yes' is invalid: expected True or False"),
    ({"digits": 2.5}, r"metric 'x': digits 2.5 is invalid: expected an integer from 0 to 12"),
    ({"digits": True}, r"metric 'x': digits True is invalid"),
    ({"unit": None}, r"metric 'x': unit None is invalid: expected a string"),
])
def test_register_metric_refuses_bad_declarations_by_name(restore_metrics, changes, message):
    declaration = {"name": "x", "fn": M.mse, "label": "X", "higher_is_better": True, "digits": 2,
                   "description": "test", **changes}
    with pytest.raises(CopaError, match=message):
        M.register_metric(**declaration)
    assert declaration["name"] not in M.METRICS


# ---------------------------------------------------------------------------------------------
# LPIPS


def test_lpips_unavailable_without_weights(empty_torch_home):
    ok, reason = M.lpips_available()
    assert ok is False
    assert "alexnet-owt-7be5be79.pth" in reason
    assert str(empty_torch_home / "hub" / "checkpoints") in reason
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(M.LPIPSUnavailable, match="alexnet-owt-7be5be79.pth") as info:
        M.lpips(x, x)
    assert isinstance(info.value, CopaError)


def test_lpips_linear_weights_are_bundled_with_torchmetrics():
    assert M._lpips_linear_weights_path("alex").is_file()


def test_score_images_reports_missing_lpips_without_raising(empty_torch_home):
    recon, target = _random_pair(n=3)
    report = M.score_images(recon, target)
    assert report["per_image"]["lpips"] == [None, None, None]
    assert report["mean"]["lpips"] is None
    assert report["lpips_missing"] == M.lpips_available()[1]
    assert len(report["per_image"]["psnr"]) == 3  # the other metrics still ran
    json.dumps(report)


def test_lpips_unknown_network():
    with pytest.raises(UnknownNameError, match=r"'alexnet'.*Did you mean 'alex'"):
        M.lpips_available("alexnet")


@pytest.fixture
def random_alexnet_torch_home(empty_torch_home):
    """A TORCH_HOME holding *randomly initialised* AlexNet weights under torchvision's file name.

    torch.hub checks the SHA-256 prefix in the file name only when it downloads, not when it loads
    a cached file, so this exercises the "weights present" path (file lookup, construction,
    caching, input handling) without the network. The LPIPS values are NOT real LPIPS values;
    only properties that hold for any backbone are checked.
    """
    import torchvision

    path = M.lpips_weights_path("alex")
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def test_lpips_runs_when_weights_are_present(random_alexnet_torch_home):
    ok, reason = M.lpips_available()
    assert ok, reason
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    y = torch.rand(3, 3, 32, 32, generator=g)
    same = M.lpips(x, x)
    assert same.shape == (3,) and same.dtype == torch.float64
    assert torch.equal(same, torch.zeros(3, dtype=torch.float64))
    assert (M.lpips(x, y) > 0).all()
    assert M.lpips(x[:1], y[:1]).shape == (1,)  # torchmetrics squeezes; we keep shape N
    # clamping: overshooting values score as their clamped image
    assert torch.equal(M.lpips(x * 3 - 1, (x * 3 - 1).clamp(0, 1)), torch.zeros(3, dtype=torch.float64))
    # grey images are repeated to three channels
    grey = M.lpips(x[:, :1], y[:, :1])
    np.testing.assert_allclose(grey.numpy(), M.lpips(x[:, :1].repeat(1, 3, 1, 1), y[:, :1].repeat(1, 3, 1, 1)).numpy())
    # the network is built once
    assert M._lpips_network.cache_info().misses == 1

    report = M.score_images(y[[2, 0, 1]], y)
    assert report["lpips_missing"] is None
    assert report["per_image"]["lpips"] == [0.0, 0.0, 0.0]
    assert report["pairing"] == [1, 2, 0]


def test_lpips_rejects_images_too_small_for_alexnet(random_alexnet_torch_home):
    x = torch.rand(2, 1, 28, 28)  # MNIST-sized
    with pytest.raises(InvalidSpecError, match=r"28×28.*31×31"):
        M.lpips(x, x)
    report = M.score_images(x, x)
    assert report["per_image"]["lpips"] == [None, None]
    assert "31×31" in report["lpips_missing"]
    assert M.lpips(torch.rand(1, 3, 31, 31), torch.rand(1, 3, 31, 31)).shape == (1,)
