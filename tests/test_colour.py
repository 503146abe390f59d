"""One-shot-colour nights: Bayer FITS debayered, registered and stacked against the truth."""

import numpy as np
import pytest
from astropy.io import fits
from scipy.ndimage import convolve

from bigstack import find_transforms, open_frames, stack, synthetic
from bigstack._bayer import PATTERNS, band_rows, debayer, header_pattern
from bigstack._errors import BigstackError, FrameError
from bigstack.synthetic import Artefacts, Camera, Motion, Sky, Stars

SHAPE = (96, 128)


def _night(directory, pattern, n_frames=6, seed=3):
    return synthetic.make_frames(
        directory, n_frames=n_frames, shape=SHAPE, bayer=pattern, seed=seed,
        stars=Stars(n_stars=40, fwhm=3.5, flux_min=40000.0, flux_max=150000.0),
        sky=Sky(gradient=(0.3, -0.2), colour=(1.3, 1.0, 0.7)),
        motion=Motion(rotation_rate=0.15, drift_step=0.7, subpixel=True),
        artefacts=Artefacts(cosmic_rays=0), camera=Camera(hot_pixels=0))


@pytest.fixture(scope="module", params=PATTERNS)
def night(request, tmp_path_factory):
    truth = _night(tmp_path_factory.mktemp(request.param), request.param)
    cube = open_frames(truth.paths)
    found = find_transforms(cube, reference=0)
    return truth, cube, found


def _bright(truth, margin=12, count=6):
    """The brightest isolated stars well inside frame 0: indices into truth.stars."""
    s = truth.stars
    ny, nx = SHAPE
    inside = (s["x"] > margin) & (s["x"] < nx - 1 - margin) & (s["y"] > margin) \
        & (s["y"] < ny - 1 - margin)
    d2 = (s["x"][:, None] - s["x"][None]) ** 2 + (s["y"][:, None] - s["y"][None]) ** 2
    np.fill_diagonal(d2, np.inf)
    isolated = d2.min(axis=1) > 12 ** 2
    chosen = np.flatnonzero(inside & isolated)
    return chosen[np.argsort(s["flux"][chosen])[::-1][:count]]


def _measure(image, x, y, r=6, sky_r=(8, 11)):
    """Background-subtracted aperture flux and centroid ``[x, y]`` of a star."""
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    d = np.hypot(xx - x, yy - y)
    sky = np.nanmedian(image[(d >= sky_r[0]) & (d < sky_r[1])])
    ap = d < r
    v = image[ap] - sky
    flux = np.nansum(v)
    return flux, np.array([np.nansum(v * xx[ap]), np.nansum(v * yy[ap])]) / flux


def test_pattern_from_headers():
    cards = {"BAYERPAT": "RGGB"}
    assert header_pattern("f.fit", cards, 10) == "RGGB"
    assert header_pattern("f.fit", dict(cards, ROWORDER="TOP-DOWN"), 10) == "RGGB"
    # bottom-up: the top row is stored last, so for an even height the rows swap
    assert header_pattern("f.fit", dict(cards, ROWORDER="BOTTOM-UP"), 10) == "GBRG"
    assert header_pattern("f.fit", dict(cards, ROWORDER="BOTTOM-UP"), 11) == "RGGB"
    assert header_pattern("f.fit", dict(cards, XBAYROFF=1), 10) == "GRBG"
    assert header_pattern("f.fit", dict(cards, YBAYROFF=1), 10) == "GBRG"
    assert header_pattern("f.fit", dict(cards, XBAYROFF=1, YBAYROFF=1), 10) == "BGGR"
    assert header_pattern("f.fit", {"COLORTYP": "grbg"}, 10) == "GRBG"
    assert header_pattern("f.fit", {"COLORTYP": "RGB"}, 10) is None
    assert header_pattern("f.fit", {}, 10) is None


@pytest.mark.parametrize("cards, match", [
    ({"BAYERPAT": "RGBX"}, "BAYERPAT = 'RGBX' is not a Bayer pattern"),
    ({"BAYERPAT": 3}, "BAYERPAT = 3 is not a Bayer pattern"),
    ({"BAYERPAT": "RGGB", "XBAYROFF": 0.5}, "XBAYROFF = 0.5 is not a Bayer offset"),
    ({"BAYERPAT": "RGGB", "YBAYROFF": -1}, "YBAYROFF = -1 is not a Bayer offset"),
    ({"BAYERPAT": "RGGB", "ROWORDER": "SIDEWAYS"}, "ROWORDER = 'SIDEWAYS'"),
])
def test_bad_bayer_headers_name_the_file(tmp_path, cards, match):
    path = tmp_path / "bad.fit"
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    fits.PrimaryHDU(np.zeros((8, 8), np.uint16), header).writeto(path)
    with pytest.raises(FrameError, match=match) as err:
        open_frames([str(path)])
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_mixed_patterns_and_mono_channel_refused(tmp_path):
    a, b, c = tmp_path / "a.fit", tmp_path / "b.fit", tmp_path / "c.fit"
    fits.PrimaryHDU(np.zeros((8, 8), np.uint16), fits.Header({"BAYERPAT": "RGGB"})).writeto(a)
    fits.PrimaryHDU(np.zeros((8, 8), np.uint16), fits.Header({"BAYERPAT": "GRBG"})).writeto(b)
    fits.PrimaryHDU(np.zeros((8, 8), np.uint16)).writeto(c)
    with pytest.raises(FrameError, match="Bayer pattern GRBG differs from RGGB"):
        open_frames([str(a), str(b)])
    with pytest.raises(FrameError, match=r"the file holds one \(mono\) plane"):
        open_frames([str(c)], channel="G")
    with pytest.raises(ValueError, match="debayer must be one of"):
        open_frames([str(a)], debayer="fancy")


def _reference_bilinear(mosaic, pattern):
    """Plain scipy: each colour's samples convolved with the bilinear kernels."""
    out = []
    for colour in "RGB":
        mask = np.zeros(mosaic.shape, bool)
        for k, c in enumerate(pattern):
            if c == colour:
                mask[k // 2::2, k % 2::2] = True
        kernel = (np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]]) if colour == "G"
                  else np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]])) / 4
        out.append(convolve(np.where(mask, mosaic, 0.0), kernel, mode="mirror"))
    return np.array(out)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("shape", [(9, 11), (10, 12)])
def test_bilinear_matches_convolution_in_every_band(pattern, shape):
    ny, nx = shape
    mosaic = np.random.default_rng(1).random(shape).astype(np.float32)
    expected = _reference_bilinear(mosaic.astype(np.float64), pattern)
    for r0, r1 in [(0, ny), (0, 1), (1, 4), (3, ny), (ny - 1, ny), (2, 3), (4, 8)]:
        a, b = band_rows("bilinear", r0, r1, ny)
        assert (a, b) == (max(r0 - 1, 0), min(r1 + 1, ny))
        got = debayer(mosaic[a:b], a, r0, r1, ny, pattern, "bilinear")
        np.testing.assert_allclose(got, expected[:, r0:r1], atol=1e-6)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_cube_reads_equal_whole_frame_debayer(tmp_path, pattern):
    mosaic = np.random.default_rng(2).integers(0, 60000, (14, 10)).astype(np.uint16)
    path = tmp_path / "f.fit"
    fits.PrimaryHDU(mosaic, fits.Header({"BAYERPAT": pattern})).writeto(path)
    cube = open_frames([str(path)], rows=3)
    assert cube.dims == ("frame", "channel", "y", "x") and cube.dtype == np.float32
    assert cube.chunks[1] == (3,)  # one chunk holds every colour of a band
    np.testing.assert_allclose(cube.values[0], _reference_bilinear(mosaic.astype(float), pattern),
                               rtol=1e-6)
    sp = open_frames([str(path)], debayer="superpixel").values[0]
    cells = {c: [] for c in "RGB"}
    for k, c in enumerate(pattern):
        cells[c].append(mosaic[k // 2::2, k % 2::2].astype(float))
    np.testing.assert_allclose(sp, [np.mean(cells[c], axis=0) for c in "RGB"], rtol=1e-6)
    cfa = open_frames([str(path)], debayer="cfa").values[0]
    for i, c in enumerate("RGB"):
        mask = np.zeros(mosaic.shape, bool)
        for k, cc in enumerate(pattern):
            if cc == c:
                mask[k // 2::2, k % 2::2] = True
        np.testing.assert_array_equal(cfa[i][mask], mosaic[mask])
        assert np.isnan(cfa[i][~mask]).all()
    one = open_frames([str(path)], channel="B")
    assert one.dims == ("frame", "y", "x")
    np.testing.assert_array_equal(one.values[0], cube.values[0, 2])
    raw = open_frames([str(path)], debayer=None)
    np.testing.assert_array_equal(raw.values[0], mosaic)


def test_rgb_stack_matches_truth(night):
    truth, cube, found = night
    assert found["valid"].values.all()
    result = stack(cube, found).compute()
    assert result["stack"].dims == ("channel", "y", "x")
    assert list(result["channel"].values) == ["R", "G", "B"]
    image = result["stack"].values
    s = truth.stars
    centroids = []
    for k in _bright(truth):
        fluxes, cents = zip(*(_measure(image[c], s["x"][k], s["y"][k]) for c in range(3)),
                            strict=True)
        assert fluxes[0] / fluxes[1] == pytest.approx(s["r"][k] / s["g"][k], rel=0.02)
        assert fluxes[2] / fluxes[1] == pytest.approx(s["b"][k] / s["g"][k], rel=0.02)
        centroids.append(cents)
    centroids = np.array(centroids)  # star, channel, [x, y]
    spread = np.abs(centroids - centroids[:, 1:2]).max()
    assert spread < 0.05, centroids
    # the coloured sky's gradient: channel ratios of the background follow the sky colour
    sky = np.nanmedian(image, axis=(1, 2))
    colour = np.asarray(truth.params["sky_colour"], float)
    assert sky[0] / sky[1] == pytest.approx(colour[0] / colour[1], rel=0.05)


def test_superpixel_and_cfa_colours_and_coverage(night):
    truth, cube, found = night
    s = truth.stars
    stars = _bright(truth, count=4)
    pattern = cube.attrs["bayer"]["pattern"]
    # superpixel: half size, registered on its own green plane
    half = open_frames(truth.paths, debayer="superpixel")
    assert half.sizes["y"] == SHAPE[0] // 2
    result = stack(half, find_transforms(half, reference=0)).compute()
    cov = result["coverage"].values
    assert cov.shape == (3, SHAPE[0] // 2, SHAPE[1] // 2) and cov.max() == len(truth.paths)
    for k in stars:
        # a superpixel (x, y) covers mosaic pixels 2x..2x+1: centre 2x + 0.5
        x, y = (s["x"][k] - 0.5) / 2, (s["y"][k] - 0.5) / 2
        f = [_measure(result["stack"].values[c], x, y, r=4, sky_r=(5, 7))[0] for c in range(3)]
        assert f[0] / f[1] == pytest.approx(s["r"][k] / s["g"][k], rel=0.03)
        assert f[2] / f[1] == pytest.approx(s["b"][k] / s["g"][k], rel=0.03)
    # cfa: each colour's own samples; coverage per colour follows its share of the cell
    cfa = open_frames(truth.paths, debayer="cfa")
    result = stack(cfa, found).compute()
    cov = result["coverage"].values.astype(float)
    n = len(truth.paths)
    inner = (slice(8, -8), slice(8, -8))
    shares = [cov[c][inner].mean() / n for c in range(3)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.08)
    assert pattern in PATTERNS
    image = result["stack"].values
    assert np.isfinite(image[1][inner]).mean() > 0.9  # green fills in from six frames
    # the colours' ratio on the pixels every colour covers (the star's profile is shared)
    image = np.where(np.isfinite(image).all(axis=0), image, np.nan)
    errors = []
    for k in stars:
        f = [_measure(image[c], s["x"][k], s["y"][k])[0] for c in range(3)]
        errors += [f[0] / f[1] / (s["r"][k] / s["g"][k]) - 1,
                   f[2] / f[1] / (s["b"][k] / s["g"][k]) - 1]
    print("cfa colour errors", np.round(errors, 3))
    # nearest placement of six frames' samples: each colour's pixels sit up to half a
    # pixel off, so single stars' colours scatter more than the interpolated stack's
    assert np.abs(errors).max() < 0.08 and abs(np.mean(errors)) < 0.03
    with pytest.raises(ValueError, match="subpixel='nearest'"):
        stack(cfa, found, subpixel="lanczos3")


def test_colour_store_and_one_channel(night, tmp_path):
    truth, cube, found = night
    out = stack(cube, found, store=tmp_path / "s.zarr", memory="8MB")
    assert out["stack"].dims == ("channel", "y", "x")
    assert list(out["channel"].values) == ["R", "G", "B"]
    assert out.attrs["channels"] == ["R", "G", "B"] and out.attrs["debayer"] == "bilinear"
    lazy = stack(cube, found).compute()
    np.testing.assert_allclose(out["stack"].values, lazy["stack"].values, rtol=1e-6)
    # one channel alone takes another path through the warp: float32 sums in another order,
    # a few units in the last place (1.0001e-6 relative at one pixel of GRBG's green)
    green = stack(cube.sel(channel="G"), found).compute()
    np.testing.assert_allclose(green["stack"].values, lazy["stack"].values[1], rtol=2e-6)
    picked = stack(open_frames(truth.paths, channel="R"), found).compute()
    np.testing.assert_allclose(picked["stack"].values, lazy["stack"].values[0], rtol=2e-6)


def test_colour_calibration_on_the_mosaic(tmp_path):
    """Masters are mosaics; flats normalised per colour keep the lights' colour balance;
    calibrate() on a colour cube calibrates the mosaic rows, then debayers them."""
    from bigstack import calibrate, make_master

    rng = np.random.default_rng(4)
    ny, nx = 24, 32
    pattern = "GBRG"
    colour_of = np.empty((ny, nx), "U1")
    for k, c in enumerate(pattern):
        colour_of[k // 2::2, k % 2::2] = c
    level = {"R": 20000.0, "G": 30000.0, "B": 12000.0}  # a reddish flat panel
    vignette = 1.0 - 0.2 * np.hypot(*np.mgrid[-1:1:ny * 1j, -1:1:nx * 1j]) ** 2
    bias = 500.0 + rng.normal(0, 3, (ny, nx)).round()

    def write(name, data):
        path = tmp_path / name
        header = fits.Header({"BAYERPAT": pattern, "EXPTIME": 10.0})
        fits.PrimaryHDU(np.round(data).astype(np.uint16), header).writeto(path)
        return str(path)

    biases = [write(f"b{i}.fit", bias) for i in range(3)]
    panel = np.vectorize(level.get)(colour_of) * vignette
    flats = [write(f"f{i}.fit", panel * (1 + 0.1 * i) + bias) for i in range(3)]
    scene = rng.uniform(1000, 5000, (ny, nx))
    lights = [write(f"l{i}.fit", scene * vignette + bias) for i in range(2)]

    master_bias = make_master(biases, "bias", method="mean")
    master_flat = make_master(flats, "flat", method="mean", bias=master_bias)
    assert master_bias.shape == (ny, nx) and master_flat.attrs["bayer"] == pattern
    for c in "RGB":  # each colour's median is 1: the panel's colour is taken out
        assert np.median(master_flat.values[colour_of == c]) == pytest.approx(1.0, abs=1e-6)
    cube = open_frames(lights)
    calibrated = calibrate(cube, bias=master_bias, flat=master_flat)
    assert calibrated.dims == ("frame", "channel", "y", "x")
    assert calibrated.attrs["calibration"]["flat"] is not None
    raw = fits.getdata(lights[0]).astype(float)
    mosaic = (raw - master_bias.values) / master_flat.values
    expected = _reference_bilinear(mosaic, pattern)
    np.testing.assert_allclose(calibrated.values[0], expected, rtol=2e-5)
    # each colour's level kept: the flat scales every colour by its own vignetting only
    medians = {c: np.median(master_flat.values[colour_of == c] / vignette[colour_of == c])
               for c in "RGB"}
    assert medians["R"] == pytest.approx(medians["B"], rel=0.02)
    one = calibrate(open_frames(lights, channel="R"), bias=master_bias, flat=master_flat)
    np.testing.assert_allclose(one.values[0], expected[0], rtol=2e-5)
    result = stack(calibrated).compute()
    assert result["stack"].dims == ("channel", "y", "x")
    assert result.attrs["calibration"]["bias"] is not None


def test_raw_frames_debayer_through_the_same_path(tmp_path):
    """Camera RAW: the visible mosaic and LibRaw's pattern, debayered as Bayer FITS are."""
    rawpy = pytest.importorskip("rawpy")
    from bigstack._dng import write_dng

    mosaic = np.random.default_rng(6).integers(0, 4000, (40, 64)).astype(np.uint16)
    path = write_dng(tmp_path / "r.dng", mosaic, pattern="GBRG")
    with rawpy.imread(str(path)) as raw:
        visible = raw.raw_image_visible.astype(float)
    cube = open_frames([path])
    assert cube.dims == ("frame", "channel", "y", "x") and cube.attrs["bayer"]["pattern"] == "GBRG"
    np.testing.assert_allclose(cube.values[0], _reference_bilinear(visible, "GBRG"), rtol=1e-6)
    np.testing.assert_array_equal(open_frames([path], debayer=None).values[0], visible)


def test_colour_demo(tmp_path):
    from bigstack._demo import run_demo

    summary = run_demo(tmp_path, n_frames=5, shape=(192, 256), colour=True, out=lambda s: None)
    assert summary["frames_used"] == 5  # every frame registered, none lost
    assert summary["max_shift_error_px"] < 0.05
    measured, expected = summary["star_colour"]
    np.testing.assert_allclose(measured, expected, rtol=0.02)
    from bigstack import open_stack

    assert open_stack(summary["store"])["stack"].dims == ("channel", "y", "x")


def test_find_shifts_keeps_the_good_frames_of_a_colour_night(tmp_path):
    """A debayered green plane's uneven noise is not the light of other stars (the field
    check once refused good frames: it took the MAD's square for the noise's energy)."""
    truth = synthetic.make_frames(
        tmp_path, n_frames=6, shape=(768, 1024), seed=0, bayer="RGGB",
        motion=Motion(subpixel=True, drift_step=1.2, jitter=0.5),
        artefacts=Artefacts(trail=True), stars=Stars(ref_isolation=60))
    import warnings

    from bigstack import BigstackWarning, find_shifts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BigstackWarning)  # the frames it flags: asserted below
        shifts = find_shifts(open_frames(truth.paths), star_pos=truth.ref_star, search=100)
    np.testing.assert_allclose(shifts["shift"].values, truth.shifts, atol=0.05)
    assert shifts["valid"].values.all(), list(shifts["reason"].values)


def test_shifts_and_rejection_on_a_colour_cube(night):
    """find_shifts runs on the green plane; rejection methods gather colour by colour."""
    from bigstack import find_shifts

    truth, cube, found = night
    shifts = find_shifts(cube, star_pos=truth.ref_star, search=30)
    np.testing.assert_allclose(shifts["shift"].values, truth.shifts, atol=0.15)
    median = stack(cube, found, method="median").compute()
    mean = stack(cube, found).compute()
    assert median["stack"].dims == ("channel", "y", "x") and "rejected" in median
    sky = np.nanmedian(median["stack"].values, axis=(1, 2))
    np.testing.assert_allclose(sky, np.nanmedian(mean["stack"].values, axis=(1, 2)), rtol=0.01)


def test_bottom_up_rows_read_as_the_same_colours(tmp_path):
    """A frame stored bottom-up (rows flipped, ROWORDER='BOTTOM-UP') debayers to the
    same colours, flipped: the pattern is counted from the last stored row."""
    truth = synthetic.make_frames(tmp_path / "td", n_frames=1, shape=(32, 48), bayer="RGGB",
                                  seed=8)
    with fits.open(truth.paths[0]) as hdul:
        data, header = hdul[0].data, hdul[0].header.copy()
    header["ROWORDER"] = "BOTTOM-UP"
    flipped = tmp_path / "bu.fit"
    fits.PrimaryHDU(data[::-1], header).writeto(flipped)
    top_down = open_frames(truth.paths).values[0]
    bottom_up = open_frames([str(flipped)]).values[0]
    np.testing.assert_allclose(bottom_up, top_down[:, ::-1], rtol=1e-6)


def test_colour_dng_night(tmp_path):
    pytest.importorskip("rawpy")
    truth = synthetic.make_frames(tmp_path, n_frames=2, shape=(64, 96), fmt="dng",
                                  bayer="BGGR", seed=9)
    cube = open_frames(truth.paths)
    assert cube.attrs["bayer"]["pattern"] == "BGGR"
    sky = np.median(cube.values[0], axis=(1, 2))
    colour = np.asarray(truth.params["sky_colour"], float)
    assert sky[2] / sky[1] == pytest.approx(colour[2] / colour[1], rel=0.05)


def test_colour_night_end_to_end(tmp_path):
    """A colour camera's night: masters as mosaics, calibrated colour lights, colour stack."""
    from bigstack._night import stack_night

    night = synthetic.make_night(
        tmp_path / "raw", lights=6, darks=4, flats=4, bias=4, shape=(128, 160), seed=5,
        bayer="GRBG", artefacts=Artefacts(cosmic_rays=0),
        stars=Stars(n_stars=30, fwhm=3.5, flux_min=40000.0, flux_max=150000.0))
    results = stack_night(tmp_path / "raw", tmp_path / "night.zarr", method="mean",
                          out=lambda line: None)
    (name,) = [k for k in results if k != "plan"]
    result = results[name]
    assert result["stack"].dims == ("channel", "y", "x")
    assert result.attrs["calibration"]["flat"] is not None
    truth = night.lights[0]
    reference = result.attrs["registration"]["reference"]
    image = result["stack"].values
    s = truth.stars
    # star positions in the reference frame's grid
    a = truth.transforms[reference]
    x, y = (a[:, :2] @ np.array([s["x"], s["y"]]) + a[:, 2:]).tolist()
    x, y = np.array(x), np.array(y)
    inside = (x > 15) & (x < 160 - 16) & (y > 15) & (y < 128 - 16)
    d2 = (x[:, None] - x[None]) ** 2 + (y[:, None] - y[None]) ** 2
    np.fill_diagonal(d2, np.inf)
    chosen = np.flatnonzero(inside & (d2.min(axis=1) > 144))
    chosen = chosen[np.argsort(s["flux"][chosen])[::-1][:4]]
    assert chosen.size >= 2
    for k in chosen:
        f = [_measure(image[c], x[k], y[k])[0] for c in range(3)]
        assert f[0] / f[1] == pytest.approx(s["r"][k] / s["g"][k], rel=0.03)
        assert f[2] / f[1] == pytest.approx(s["b"][k] / s["g"][k], rel=0.03)


def test_colour_store_records_its_debayer_and_refuses_append(night, tmp_path):
    truth, cube, found = night
    store = tmp_path / "r.zarr"
    out = stack(cube, found, store=store)
    # the parameters are what a resume compares: another debayer method is another run
    assert out.attrs["parameters"]["debayer"] == "bilinear"
    cfa = stack(open_frames(truth.paths, debayer="cfa"), found)
    assert cfa.attrs["parameters"]["debayer"] == "cfa"
    with pytest.raises(BigstackError, match="mode='append' is for mono stacks"):
        stack(cube, found, store=store, mode="append")
    from bigstack.cli import main

    assert main(["render", str(store), "-o", str(tmp_path / "r.png"), "--channel", "R"]) == 0
    assert main(["render", str(store), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "r.png").exists() and (tmp_path / "c.png").exists()


@pytest.mark.parametrize("pattern", ["GBRG", "BGGR"])
def test_cfa_fast_path_equals_the_colour_planes(tmp_path, pattern):
    """Whole-pixel shifts: the cfa tile adds the stored samples straight; the result equals
    adding the NaN-filled colour planes frame by frame (plain numpy)."""
    rng = np.random.default_rng(11)
    mosaics = rng.integers(0, 60000, (4, 20, 26)).astype(np.uint16)
    mosaics[2, 5, 7] = 0
    paths = []
    for i, m in enumerate(mosaics):
        path = tmp_path / f"f{i}.fit"
        fits.PrimaryHDU(m, fits.Header({"BAYERPAT": pattern})).writeto(path)
        paths.append(str(path))
    shifts = np.array([[0, 0], [1, 0], [0, -1], [3, 2]], float)
    cube = open_frames(paths, debayer="cfa")
    got = stack(cube, shifts, extent="union").compute()
    planes = cube.values.astype(np.float64)  # (frame, channel, y, x), NaN off each colour
    y0, x0 = int(got["y"].values[0]), int(got["x"].values[0])
    ny, nx = got.sizes["y"], got.sizes["x"]
    total = np.zeros((3, ny, nx))
    count = np.zeros((3, ny, nx), int)
    for f, (dx, dy) in enumerate(shifts.astype(int)):
        for y in range(ny):
            for x in range(nx):
                sy, sx = y + y0 + dy, x + x0 + dx
                if 0 <= sy < 20 and 0 <= sx < 26:
                    v = planes[f, :, sy, sx]
                    ok = np.isfinite(v)
                    total[ok, y, x] += v[ok]
                    count[ok, y, x] += 1
    np.testing.assert_array_equal(got["coverage"].values, count)
    with np.errstate(invalid="ignore"):
        expected = total / count
    np.testing.assert_allclose(got["stack"].values, expected, rtol=1e-6)
    assert got.attrs["parameters"]["subpixel"] == "nearest"


def test_rgb_files_stack_in_colour_like_each_plane_alone(tmp_path):
    """An RGB TIFF night (planes stored, nothing debayered) registers on green and stacks
    every colour in one pass: each colour equals that plane's own stack."""
    truth = synthetic.make_frames(tmp_path, n_frames=5, shape=(160, 200), fmt="tiff", seed=2)
    cube = open_frames(truth.paths)
    assert cube.dims == ("frame", "channel", "y", "x")
    transforms = find_transforms(cube, reference=0)  # the truth's reference
    assert transforms["valid"].values.all()
    err = np.abs(np.asarray(transforms["shift"].values) - truth.shifts).max()
    assert err < 0.1, err
    result = stack(cube, transforms, store=str(tmp_path / "rgb.zarr"))
    assert result["stack"].dims == ("channel", "y", "x")
    for c in "RGB":
        alone = stack(open_frames(truth.paths, channel=c), transforms)
        np.testing.assert_array_equal(result["stack"].sel(channel=c).values,
                                      alone["stack"].values)
        np.testing.assert_array_equal(result["coverage"].sel(channel=c).values,
                                      alone["coverage"].values)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_bilinear_whole_pixel_stack_equals_debayered_planes(tmp_path, pattern):
    """Whole-pixel shifts (odd ones too: the colour of a mosaic pixel on the output grid
    changes): the tile adds each frame's bilinear colours from its mosaic rows; the result
    equals adding the debayered planes (the cube's values) frame by frame in numpy, weighted,
    with a float frame whose NaN leaves its neighbours' colours out."""
    rng = np.random.default_rng(12)
    mosaics = rng.integers(0, 60000, (4, 22, 26)).astype(np.uint16)
    paths = []
    for i, m in enumerate(mosaics):
        path = tmp_path / f"f{i}.fit"
        data = m.astype(np.float32) if i == 3 else m
        if i == 3:
            data[6, 9] = np.nan
        fits.PrimaryHDU(data, fits.Header({"BAYERPAT": pattern})).writeto(path)
        paths.append(str(path))
    shifts = np.array([[0, 0], [1, 0], [-3, 1], [2, -5]], float)
    weights = np.array([1.0, 0.5, 2.0, 1.5])
    cube = open_frames(paths)
    # the reference grid: a frame shifted by +1 starts its window on an odd column
    got = stack(cube, shifts, weights=weights).compute()
    planes = cube.values.astype(np.float64)  # (frame, channel, y, x): debayer's values
    assert np.isnan(planes[3]).any()
    y0, x0 = int(got["y"].values[0]), int(got["x"].values[0])
    ny, nx = got.sizes["y"], got.sizes["x"]
    total = np.zeros((3, ny, nx))
    norm = np.zeros((3, ny, nx))
    count = np.zeros((3, ny, nx), int)
    for f, (dx, dy) in enumerate(shifts.astype(int)):
        ys, xs = np.arange(ny) + y0 + dy, np.arange(nx) + x0 + dx
        iy, ix = (ys >= 0) & (ys < 22), (xs >= 0) & (xs < 26)
        part = planes[f][:, ys[iy]][:, :, xs[ix]]
        ok = np.isfinite(part)
        window = (slice(None), np.flatnonzero(iy)[:, None], np.flatnonzero(ix)[None, :])
        total[window] += np.where(ok, weights[f] * part, 0)
        norm[window] += weights[f] * ok
        count[window] += ok
    np.testing.assert_array_equal(got["coverage"].values, count)
    with np.errstate(invalid="ignore"):
        expected = total / norm
    np.testing.assert_allclose(got["stack"].values, expected, rtol=1e-6)



def test_colour_night_with_hot_pixels_keeps_the_stars_fwhm(tmp_path):
    """The demo's colour night (its frame size, the camera's hot pixels, the night's
    cosmic rays): through the bilinear demosaic of the green plane a hot pixel is a
    plus of five pixels, and in the row bands registration reads first they once
    outnumbered the stars among the best detections; the reference's FWHM was read
    as 1.3 px for 3.3 px stars and, in the 60-frame demo, 6 good frames were
    refused as "not of this field". Every frame's FWHM is the stars' own and every
    frame is valid and right against the truth."""
    truth = synthetic.make_frames(
        tmp_path, n_frames=3, shape=(1536, 2048), bayer="RGGB", seed=11,
        motion=Motion(subpixel=True, drift_step=1.2, jitter=0.5),
        stars=Stars(ref_isolation=60))
    found = find_transforms(open_frames(truth.paths), reference=0)
    assert found["valid"].values.all(), list(found["reason"].values)
    np.testing.assert_allclose(found["shift"].values, truth.shifts, atol=0.05)
    np.testing.assert_allclose(found["fwhm"].values, truth.params["fwhm"], rtol=0.15)
