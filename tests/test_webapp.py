"""`trellis-jax app` driven by headless Chromium: upload an image, set a sampler setting, submit, and
check the result page's preview and that its GLB / PLY downloads parse. Chromium is Debian's
(/usr/bin/chromium, installed by .ci/run); missing in CI it is a failure, elsewhere a skip."""
import os
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import trimesh

from trellis_jax import webapp
from trellis_jax.export.asset import AssetOptions
from trellis_jax.export.gaussian_ply import read_gaussian_ply

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _need_chromium():
    """playwright.sync_api, with Chromium present: missing either is a failure in CI, a skip elsewhere."""
    import importlib

    try:
        sync_api = importlib.import_module("playwright.sync_api")
        missing = None if os.path.exists(CHROMIUM) else f"{CHROMIUM} not found: apt-get install -y chromium"
    except ImportError:
        missing = "playwright not installed: pip install -e '.[dev]'"
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"the browser test needs it: {missing}")
    return sync_api


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free localhost port over a tiny random image pipeline with a mesh decoder."""
    from trellis_jax.sampling.random_pipeline import write_random_pipeline

    weights = write_random_pipeline(tmp_path_factory.mktemp("pipe") / "weights", steps=2, mesh=True)
    # a small bake: the default (100 views at 512², twice rasterised) alone takes ~160 s on a 2-core host
    assets = AssetOptions(video_frames=4, video_resolution=48, texture_size=128, bake_views=6, bake_resolution=96)
    app = webapp.App(webapp.load(weights, capacity=2048), tmp_path_factory.mktemp("results"), assets)
    srv = webapp.serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", app
    srv.shutdown()
    srv.server_close()


def test_browser_generates_and_downloads(server, prompt, tmp_path):
    playwright = _need_chromium()
    url, app = server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url + "/")
        assert page.input_value("#ss_steps") == "2"  # the pipeline.json settings are the form's defaults
        page.set_input_files("#image", str(prompt))
        page.fill("#seed", "3")
        page.fill("#slat_steps", "1")
        # click Generate from the page itself: Playwright's click would time out waiting for the (slow) POST
        page.evaluate("() => setTimeout(() => document.getElementById('generate').click(), 0)")
        page.wait_for_selector("#result, #error", timeout=300_000)
        assert page.locator("#error").count() == 0, page.locator("#error").inner_text()
        assert page.locator("#video").get_attribute("src").endswith("/preview.mp4")
        gif_ok = page.evaluate("() => { const i = document.querySelector('#preview'); return i.complete && i.naturalWidth; }")
        assert gif_ok == 2 * 48  # colour and mesh-normal panels side by side
        assert page.input_value("#slat_steps") == "1"  # the form keeps the submitted values
        files = {}
        for kind in ("glb", "ply"):
            with page.expect_download() as info:
                page.click(f"#download-{kind}")
            files[kind] = tmp_path / f"sample.{kind}"
            info.value.save_as(files[kind])
        browser.close()
    mesh = trimesh.load(files["glb"], force="mesh")
    assert len(mesh.faces) > 0 and len(mesh.vertices) > 0
    gs = read_gaussian_ply(files["ply"])
    assert gs["xyz"].shape[0] > 0 and np.isfinite(gs["xyz"]).all()
    (variant,) = app.pipe._variants.values()  # one setting, and it reached the sampler
    assert variant.slat_sampler.steps == 1 and variant.ss_sampler.steps == 2
    (rid,) = [d.name for d in app.out_dir.iterdir()]  # one complete result folder, no .partial-* left
    assert urllib.request.urlopen(f"{url}/outputs/{rid}/preview.mp4").read()[4:8] == b"ftyp"  # an mp4 container


def test_bad_input_is_one_line_on_the_page(server):
    url, _ = server
    boundary = "XyZ"

    def post(fields: dict, image: bytes):
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
        body = "".join(parts).encode() + (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
                                          "Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(url + "/generate", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 400
        return e.value.read().decode()

    assert "Error: the uploaded file is not a readable image" in post({"seed": "1"}, b"not a png")
    assert "Error: ss_steps must be an integer, got &#x27;two&#x27;" in post({"ss_steps": "two"}, b"")
    assert "Error: slat_steps must be in [1, 500], got 0" in post({"slat_steps": "0"}, b"")
    assert "Traceback" not in post({"seed": "-1"}, b"")


def test_missing_weights_is_one_line(tmp_path, capsys):
    assert webapp.main(["--weights", str(tmp_path / "nope"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"trellis-jax app: {tmp_path / 'nope'}: directory not found"
