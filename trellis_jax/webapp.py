"""A browser front end to a pipeline directory, like the reference's demo (`trellis-jax app`).

    trellis-jax app --weights DIR [--host 127.0.0.1] [--port 7860] [--out DIR]
                    [--image-encoder HF_DIR | --text-encoder HF_DIR] [--ckpt-root DIR ...]
                    [asset flags of `generate`: --texture-size, --bake-views, --video-frames, ...]

One page: an image upload (image pipelines) or a text prompt (text pipelines), the seed and the two
stages' sampler settings (steps, guidance strength). Submitting runs the pipeline (`trellis_jax.api`:
one jitted call; the pipeline is loaded once at start and reused, so a repeated setting does not
recompile) and answers a page with a turntable preview (mp4 `<video>` plus an animated GIF, for
browsers without H.264) and download links for the GLB (mesh pipelines) and the 3DGS PLY.
Requests are served by threads but generate one at a time (a lock). Each result is written as its
own folder under --out, assembled as `<id>.partial-*` and renamed when complete (`trellis_jax.atomic`).
Bad input (no weights, an unreadable upload, a bad number) is one line on the page (HTTP 400) or,
at start, one line on stderr with exit status 2; never a traceback. Binds localhost unless told.
"""
from __future__ import annotations

import argparse
import email.parser
import email.policy
import html
import io
import sys
import tempfile
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from trellis_jax import api
from trellis_jax.atomic import atomic_directory
from trellis_jax.export.asset import AssetOptions, add_asset_arguments, asset_options

# (form field, sampler dict, parameter, type, lower bound, upper bound): the settings the page exposes.
SETTINGS = (
    ("ss_steps", "sparse_structure_sampler_params", "steps", int, 1, 500),
    ("ss_cfg_strength", "sparse_structure_sampler_params", "cfg_strength", float, 0.0, 100.0),
    ("slat_steps", "slat_sampler_params", "steps", int, 1, 500),
    ("slat_cfg_strength", "slat_sampler_params", "cfg_strength", float, 0.0, 100.0),
)
CONTENT_TYPES = {".mp4": "video/mp4", ".gif": "image/gif", ".png": "image/png", ".glb": "model/gltf-binary",
                 ".ply": "application/octet-stream"}
MAX_UPLOAD = 32 << 20


class BadRequest(ValueError):
    """A problem with the submitted form, shown on the page as one line."""


def load(weights: str | Path, capacity: int, **encoders) -> api._Pipeline:
    """The API pipeline of a directory, image- or text-conditioned as its pipeline.json says.
    encoders: `from_pretrained`'s image_encoder / text_encoder / search_roots."""
    weights = Path(weights)
    if not (weights / "pipeline.json").is_file():
        raise FileNotFoundError(f"{weights}: {'no pipeline.json in it' if weights.is_dir() else 'directory not found'}")
    try:
        return api.TrellisImageTo3DPipeline.from_pretrained(weights, capacity=capacity, **encoders)
    except ValueError as e:
        if "text-conditioned pipeline" not in str(e):
            raise
    return api.TrellisTextTo3DPipeline.from_pretrained(weights, capacity=capacity, **encoders)


def defaults(pipe: api._Pipeline) -> dict[str, float]:
    """The form's initial values: the pipeline.json sampler settings."""
    samplers = {"sparse_structure_sampler_params": pipe.pipeline.ss_sampler, "slat_sampler_params": pipe.pipeline.slat_sampler}
    return {field: getattr(samplers[group], name) for field, group, name, *_ in SETTINGS}


def parse_form(content_type: str, body: bytes) -> dict[str, str | bytes]:
    """multipart/form-data -> {field: str, or bytes for a file field}."""
    if not content_type.startswith("multipart/form-data"):
        raise BadRequest(f"expected a multipart/form-data form, got {content_type or 'no content type'!r}")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise BadRequest("the form body is not multipart")
    fields = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            data = part.get_payload(decode=True) or b""
            fields[name] = data if part.get_filename() is not None else data.decode("utf-8", "replace")
    return fields


def parse_settings(fields: dict) -> tuple[int, dict, dict]:
    """The form's seed and sampler settings -> (seed, ss params, slat params), each bad number one error."""
    try:
        seed = int(str(fields.get("seed", "0")).strip())
    except ValueError:
        raise BadRequest(f"seed must be an integer, got {fields.get('seed')!r}") from None
    if not 0 <= seed < 2**31:
        raise BadRequest(f"seed must be in [0, 2^31), got {seed}")
    params = {"sparse_structure_sampler_params": {}, "slat_sampler_params": {}}
    for field, group, name, kind, lo, hi in SETTINGS:
        raw = str(fields.get(field, "")).strip()
        if not raw:
            continue
        try:
            value = kind(raw)
        except ValueError:
            raise BadRequest(f"{field} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
        if not (lo <= value <= hi) or value != value:
            raise BadRequest(f"{field} must be in [{lo}, {hi}], got {raw}")
        params[group][name] = value
    return seed, params["sparse_structure_sampler_params"], params["slat_sampler_params"]


def read_upload(data: bytes):
    """Uploaded image bytes -> a fully decoded PIL image (an unreadable upload is one error)."""
    from PIL import Image

    if not data:
        raise BadRequest("no image uploaded; choose an image file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError) as e:
        raise BadRequest(f"the uploaded file is not a readable image ({e})") from None


class App:
    """The loaded pipeline, the output folder, how the GLB and the preview are made (`generate`'s asset
    options; the preview needs video_frames >= 1) and the lock that makes generation one at a time."""

    def __init__(self, pipe: api._Pipeline, out_dir: Path, assets: AssetOptions = AssetOptions()):
        if assets.check().video_frames < 1:
            raise ValueError(f"--video-frames must be >= 1 (the page's turntable preview), got {assets.video_frames}")
        self.pipe, self.out_dir, self.assets = pipe, Path(out_dir), assets
        self.lock = threading.Lock()

    def generate(self, fields: dict) -> tuple[str, dict[str, str], float]:
        """A submitted form -> (result id, {kind: file name}, seconds); files under out_dir/<id>/."""
        from PIL import Image

        from trellis_jax.render.turntable import write_video

        seed, ss, slat = parse_settings(fields)
        if self.pipe.kind == "image":
            condition = read_upload(fields.get("image", b""))
        else:
            condition = str(fields.get("prompt", "")).strip()
            if not condition:
                raise BadRequest("empty text prompt; describe the object to generate")
        rid = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        with self.lock:
            t0 = time.time()
            out = self.pipe.run(condition, seed=seed, sparse_structure_sampler_params=ss, slat_sampler_params=slat)
            gaussian, mesh = out["gaussian"][0], (out["mesh"][0] if "mesh" in out else None)
            o = self.assets
            panels = [api.render_video(gaussian, o.video_frames, o.video_resolution)["color"]]
            if mesh is not None:  # the reference demo's layout: colour and mesh normals side by side
                panels.append(api.render_video(mesh, o.video_frames, o.video_resolution)["normal"])
            frames = np.concatenate(panels, axis=2)
            files = {}
            with atomic_directory(self.out_dir / rid) as tmp:
                write_video(tmp / "preview.mp4", frames, o.video_fps)
                Image.fromarray(frames[0]).save(tmp / "preview.gif", save_all=True, duration=int(1000 / o.video_fps), loop=0,
                                                append_images=[Image.fromarray(f) for f in frames[1:]])
                files.update(video="preview.mp4", gif="preview.gif")
                api.save_ply(gaussian, tmp / "sample.ply")
                files["ply"] = "sample.ply"
                if mesh is not None:
                    api.to_glb(gaussian, mesh, verbose=False, **o.glb_kwargs()).export(tmp / "sample.glb")
                    files["glb"] = "sample.glb"
            return rid, files, time.time() - t0

    def page(self, values: dict | None = None, result: tuple | None = None, error: str | None = None) -> str:
        """The one HTML page: the form (with the last values), then the result or the error."""
        v = {**defaults(self.pipe), "seed": 0, **(values or {})}
        esc = lambda x: html.escape(str(x), quote=True)
        if self.pipe.kind == "image":
            condition = '<label>Image <input type="file" id="image" name="image" accept="image/*" required></label>'
        else:
            condition = (f'<label>Prompt <input type="text" id="prompt" name="prompt" size="60" required '
                         f'value="{esc(v.get("prompt", ""))}"></label>')
        inputs = "".join(
            f'<label>{label} <input type="number" id="{field}" name="{field}" step="{step}" value="{esc(v[field])}"></label>'
            for field, label, step in (("seed", "Seed", "1"),
                                       ("ss_steps", "Sparse structure: steps", "1"),
                                       ("ss_cfg_strength", "Sparse structure: guidance strength", "any"),
                                       ("slat_steps", "Structured latent: steps", "1"),
                                       ("slat_cfg_strength", "Structured latent: guidance strength", "any")))
        body = ""
        if error:
            body = f'<p id="error" class="error">Error: {esc(error)}</p>'
        elif result:
            rid, files, seconds = result
            url = lambda name: f"/outputs/{rid}/{name}"
            links = [f'<a id="download-{k}" href="{url(files[k])}" download>Download {k.upper()}</a>'
                     for k in ("glb", "ply") if k in files]
            if "glb" not in files:
                links.append('<span id="no-glb">(no GLB: this pipeline has no mesh decoder)</span>')
            body = (f'<div id="result"><p>Generated in {seconds:.1f} s (seed {esc(v["seed"])}).</p>'
                    f'<video id="video" src="{url(files["video"])}" autoplay loop muted playsinline controls></video>'
                    f'<img id="preview" src="{url(files["gif"])}" alt="turntable preview">'
                    f'<p>{" ".join(links)}</p></div>')
        return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>trellis-jax</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} label{{display:block;margin:.4em 0}}
.error{{color:#b00;font-weight:bold}} video,img{{max-width:45%;margin-right:1em}}</style></head>
<body><h1>trellis-jax: {esc(self.pipe.kind)} to 3D</h1>
<form id="form" method="post" action="/generate" enctype="multipart/form-data">
{condition}{inputs}<button id="generate" type="submit">Generate</button></form>
{body}</body></html>"""


def make_handler(app: App):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, content: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def _html(self, status: int, text: str) -> None:
            self._send(status, text.encode(), "text/html; charset=utf-8")

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/":
                return self._html(HTTPStatus.OK, app.page())
            parts = path.strip("/").split("/")
            if len(parts) == 3 and parts[0] == "outputs" and ".partial-" not in parts[1]:
                root = app.out_dir.resolve()
                file = (root / parts[1] / parts[2]).resolve()
                if file.parent.parent == root and file.is_file():
                    return self._send(HTTPStatus.OK, file.read_bytes(), CONTENT_TYPES.get(file.suffix, "application/octet-stream"))
            self._html(HTTPStatus.NOT_FOUND, "<p class='error'>not found</p>")

        def do_POST(self):
            if self.path.split("?", 1)[0] != "/generate":
                return self._html(HTTPStatus.NOT_FOUND, "<p class='error'>not found</p>")
            fields = {}
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_UPLOAD:
                    raise BadRequest(f"the upload is {length / 2**20:.1f} MiB; the limit is {MAX_UPLOAD >> 20} MiB")
                fields = parse_form(self.headers.get("Content-Type", ""), self.rfile.read(length))
                result = app.generate(fields)
            except (BadRequest, ValueError, FloatingPointError, RuntimeError) as e:  # CapacityError is a ValueError/RuntimeError
                shown = {k: v for k, v in fields.items() if isinstance(v, str)}
                return self._html(HTTPStatus.BAD_REQUEST, app.page(shown, error=str(e).splitlines()[0] if str(e) else type(e).__name__))
            self._html(HTTPStatus.OK, app.page({k: v for k, v in fields.items() if isinstance(v, str)}, result=result))

        def log_message(self, format, *args):
            print(f"app: {self.address_string()} {format % args}", file=sys.stderr)

    return Handler


def serve(app: App, host: str, port: int) -> ThreadingHTTPServer:
    """A started-but-not-serving server on (host, port); port 0 picks a free one (`server.server_address`)."""
    server = ThreadingHTTPServer((host, port), make_handler(app))
    server.daemon_threads = True
    return server


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="trellis-jax app", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="pipeline directory (pipeline.json + ckpts/)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    ap.add_argument("--port", type=int, default=7860, help="port (0: any free one)")
    ap.add_argument("--out", default=None, help="folder for the results (default: a new temporary folder)")
    ap.add_argument("--image-encoder", help="HF-format DINOv2-with-registers directory (image pipelines)")
    ap.add_argument("--text-encoder", help="HF-format CLIP text directory (text pipelines)")
    ap.add_argument("--ckpt-root", nargs="*", default=[], help="where cross-repo checkpoints live")
    ap.add_argument("--capacity", type=int, default=32768, help="voxel capacity of the sampler")
    add_asset_arguments(ap)
    args = ap.parse_args(argv)
    if args.capacity < 1:
        print(f"trellis-jax app: --capacity must be >= 1, got {args.capacity}", file=sys.stderr)
        return 2
    if not 0 <= args.port < 65536:
        print(f"trellis-jax app: --port must be in [0, 65535], got {args.port}", file=sys.stderr)
        return 2
    try:
        assets = asset_options(args)
        out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="trellis_app_"))
        out_dir.mkdir(parents=True, exist_ok=True)
        pipe = load(args.weights, args.capacity, image_encoder=args.image_encoder, text_encoder=args.text_encoder,
                    search_roots=args.ckpt_root)
        server = serve(App(pipe, out_dir, assets), args.host, args.port)
    except (OSError, ValueError, KeyError) as e:
        print(f"trellis-jax app: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"trellis-jax app: serving {pipe.kind} -> 3D on http://{host}:{port}/ (results in {out_dir}); Ctrl-C stops",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
