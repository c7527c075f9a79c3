"""The render worker: a child process that keeps one f3d engine warm between jobs.

    python -m bot.render.worker [auto|egl|osmesa]

It reads one JSON request per line on stdin and answers each with one JSON line on stdout.
Running f3d here, not in the bot, means a graphics crash or hang costs one render, never
the bot. f3d is imported first: its wheel carries its own libssl.so.3 and libsqlite3.so.0,
which clash with the system's if Python's ssl or sqlite3 load them before it.
"""

from __future__ import annotations

# isort: off
import f3d  # first: before anything can load the system's libssl

# isort: on
import ctypes
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
import numpy.typing as npt
from PIL import Image

UP = {"+Y": np.array([0.0, 1.0, 0.0]), "+Z": np.array([0.0, 0.0, 1.0])}
FRONT = {"+Y": np.array([0.0, 0.0, 1.0]), "+Z": np.array([0.0, -1.0, 0.0])}
VIEW_AZIMUTH, VIEW_ELEVATION = 35.0, 20.0
FILL = 0.86  # the object's longer side, as a share of the picture
PROBE_SIZE = 160

COMMON_OPTIONS = {
    "ui.loader_progress": False,
    "render.background.color": [1.0, 1.0, 1.0],
}
MODE_OPTIONS = {
    "mesh": {
        "model.point_sprites.type": "none",
        "model.coloring": "material",
        "render.hdri.ambient": True,
        "render.effect.tone_mapping": True,
        "render.effect.antialiasing.mode": "fxaa",
        "render.effect.blending.mode": "none",
    },
    "splat": {
        "model.point_sprites.type": "gaussian",
        "model.point_sprites.absolute_size": True,
        "model.point_sprites.size": 1.0,
        "model.coloring": "direct",
        "model.scivis.array_name": "color",
        "render.hdri.ambient": False,
        "render.effect.tone_mapping": False,
        "render.effect.antialiasing.mode": "none",
        "render.effect.blending.mode": "sort_cpu",
    },
}
# A mesh PLY's vertex colours are drawn directly; everything else as for meshes.
MODE_OPTIONS["mesh_colours"] = {**MODE_OPTIONS["mesh"], "model.coloring": "direct"}
# A mesh with no colour at all (SAM 3D's GLB) is drawn in clay, which reads better than white.
MODE_OPTIONS["mesh_plain"] = {**MODE_OPTIONS["mesh"], "model.color.rgb": [0.80, 0.70, 0.58]}
# None unsets an option: materials keep their own colours.
MODE_OPTIONS["mesh"]["model.color.rgb"] = None
MODE_OPTIONS["mesh_colours"]["model.color.rgb"] = None
MODE_OPTIONS["splat"]["model.color.rgb"] = None

WARM_UP_OBJ = """v -0.5 -0.5 -0.5\nv 0.5 -0.5 -0.5\nv 0.5 0.5 -0.5\nv -0.5 0.5 -0.5
v -0.5 -0.5 0.5\nv 0.5 -0.5 0.5\nv 0.5 0.5 0.5\nv -0.5 0.5 0.5
f 1 3 2\nf 1 4 3\nf 5 6 7\nf 5 7 8\nf 1 2 6\nf 1 6 5\nf 2 3 7\nf 2 7 6\nf 3 4 8\nf 3 8 7
f 4 1 5\nf 4 5 8
"""


def main(backend: str) -> None:
    """Serve requests until stdin closes."""
    # Replies get a private copy of stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    try:
        drawer = Drawer(*make_engine(backend))
        drawer.warm_up()
    except Exception as exc:  # report why, then end: the parent shows it to the admin
        _send(replies, {"ok": False, "error": f"the renderer could not start ({exc})"})
        return
    try:
        _send(replies, {"ok": True, "ready": True})
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                reply = drawer.handle(json.loads(line))
            except Exception as exc:
                reply = {"ok": False, "error": str(exc) or type(exc).__name__}
            _send(replies, reply)
    except BrokenPipeError:  # the bot went away first: nothing left to answer
        return


def _send(stream: TextIO, message: dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def make_engine(backend: str) -> tuple[f3d.Engine, Canvas]:
    """The engine and the canvas it draws on. auto: our own EGL surface where we can have one
    (one render per picture), else f3d's own EGL window, else OSMesa. egl: f3d's EGL window.
    osmesa: f3d's OSMesa window."""
    f3d.Log.set_verbose_level(f3d.Log.VerboseLevel.QUIET)
    f3d.Engine.autoload_plugins()
    if backend == "osmesa":
        return f3d.Engine.create_osmesa(), F3dCanvas()
    if backend == "auto":
        try:
            canvas = EglCanvas()
            return f3d.Engine.create_external_egl(), canvas
        except Exception as exc:  # no libOpenGL, no EGL platform: f3d's own window
            print(f"own EGL surface unavailable ({exc}); using f3d's window", file=sys.stderr)
    try:
        return f3d.Engine.create_egl(), F3dCanvas()
    except Exception:
        if backend == "egl":
            raise
        return f3d.Engine.create_osmesa(), F3dCanvas()  # software OSMesa, same pictures


Vector = npt.NDArray[np.float64]


class Canvas(Protocol):
    def draw(self, window: f3d.Window, size: int) -> Image.Image: ...


class F3dCanvas:
    """Pixels through f3d's render_to_image (which renders the picture three times over)."""

    def draw(self, window: f3d.Window, size: int) -> Image.Image:
        window.size = (size, size)
        image = window.render_to_image(True)
        channels = image.channel_count
        pixels = np.frombuffer(bytes(image.content), np.uint8).reshape(
            image.height, image.width, channels
        )[::-1]  # f3d's rows run bottom to top
        return Image.fromarray(np.ascontiguousarray(pixels), "RGBA" if channels == 4 else "RGB")


class EglCanvas:
    """An EGL context and pbuffer of our own, current while f3d draws into it as an external
    window: one render() per picture, read back with glReadPixels. Mesa's surfaceless
    platform needs no display or GPU."""

    def __init__(self, side: int = 512):
        os.environ.setdefault("EGL_PLATFORM", "surfaceless")
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")  # read at PyOpenGL's first import
        from OpenGL import EGL, GL

        self.EGL, self.GL = EGL, GL
        self.display = EGL.eglGetDisplay(EGL.EGL_DEFAULT_DISPLAY)
        major, minor = EGL.EGLint(), EGL.EGLint()
        if not EGL.eglInitialize(self.display, ctypes.pointer(major), ctypes.pointer(minor)):
            raise RuntimeError("eglInitialize failed")
        self.config = EGL.EGLConfig()
        found = EGL.EGLint()
        wanted = _egl_attributes(
            EGL,
            EGL.EGL_SURFACE_TYPE,
            EGL.EGL_PBUFFER_BIT,
            EGL.EGL_RED_SIZE,
            8,
            EGL.EGL_GREEN_SIZE,
            8,
            EGL.EGL_BLUE_SIZE,
            8,
            EGL.EGL_ALPHA_SIZE,
            8,
            EGL.EGL_DEPTH_SIZE,
            24,
            EGL.EGL_RENDERABLE_TYPE,
            EGL.EGL_OPENGL_BIT,
        )
        if (
            not EGL.eglChooseConfig(
                self.display, wanted, ctypes.pointer(self.config), 1, ctypes.pointer(found)
            )
            or not found.value
        ):
            raise RuntimeError("no EGL configuration with RGBA and depth")
        EGL.eglBindAPI(EGL.EGL_OPENGL_API)
        self.context = EGL.eglCreateContext(
            self.display,
            self.config,
            EGL.EGL_NO_CONTEXT,
            _egl_attributes(
                EGL,
                EGL.EGL_CONTEXT_MAJOR_VERSION,
                3,
                EGL.EGL_CONTEXT_MINOR_VERSION,
                2,
                EGL.EGL_CONTEXT_OPENGL_PROFILE_MASK,
                EGL.EGL_CONTEXT_OPENGL_CORE_PROFILE_BIT,
            ),
        )
        if not self.context:
            raise RuntimeError("eglCreateContext failed")
        self.surface: Any = None
        self.side = 0
        self._ensure(side)

    def _ensure(self, size: int) -> None:
        """A pbuffer at least `size` square (f3d draws in its lower left corner)."""
        if size <= self.side:
            return
        EGL = self.EGL
        surface = EGL.eglCreatePbufferSurface(
            self.display,
            self.config,
            _egl_attributes(EGL, EGL.EGL_WIDTH, size, EGL.EGL_HEIGHT, size),
        )
        if not surface or not EGL.eglMakeCurrent(self.display, surface, surface, self.context):
            raise RuntimeError(f"no {size} px EGL surface")
        if self.surface is not None:
            EGL.eglDestroySurface(self.display, self.surface)
        self.surface, self.side = surface, size

    def draw(self, window: f3d.Window, size: int) -> Image.Image:
        self._ensure(size)
        window.size = (size, size)
        window.render()
        GL = self.GL
        data = GL.glReadPixels(0, 0, size, size, GL.GL_RGBA, GL.GL_UNSIGNED_BYTE)
        pixels = np.frombuffer(data, np.uint8).reshape(size, size, 4)[::-1]  # bottom row first
        return Image.fromarray(np.ascontiguousarray(pixels), "RGBA")


def _point(vector: Vector) -> tuple[float, float, float]:
    x, y, z = map(float, vector)
    return x, y, z


def _egl_attributes(EGL: Any, *pairs: int) -> Any:
    values = [*pairs, EGL.EGL_NONE]
    return (EGL.EGLint * len(values))(*values)


class Drawer:
    def __init__(self, engine: f3d.Engine, canvas: Canvas):
        self.engine = engine
        self.canvas = canvas
        self.window = engine.window
        self.applied: dict[str, Any] = {}

    def warm_up(self) -> None:
        """One lit render, so the lighting cache exists before a user's job needs it."""
        with tempfile.TemporaryDirectory() as tmp:
            cube = Path(tmp) / "cube.obj"
            cube.write_text(WARM_UP_OBJ)
            self.handle(
                {
                    "op": "thumbnail",
                    "path": str(cube),
                    "mode": "mesh",
                    "up": "+Y",
                    "size": 64,
                    "out": str(Path(tmp) / "cube.png"),
                    "background": "transparent",
                }
            )

    def _apply(self, options: dict[str, Any]) -> None:
        # Setting an option, even to its value, can make f3d rebuild its lighting: set changes.
        for name, value in options.items():
            if self.applied.get(name) != value:
                if value is None:
                    self.engine.options.reset(name)
                else:
                    self.engine.options[name] = value
                self.applied[name] = value

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        up = request["up"]
        self._apply(
            {**COMMON_OPTIONS, **MODE_OPTIONS[request["mode"]], "scene.up_direction": list(UP[up])}
        )
        scene = self.engine.scene
        scene.clear()
        scene.add(request["path"])
        self.window.camera.reset_to_bounds()
        camera = self.window.camera
        centre = np.array(camera.focal_point, dtype=float)
        distance = float(np.linalg.norm(np.array(camera.position) - centre))
        if request["op"] == "thumbnail":
            written = self._thumbnail(request, centre, distance, up)
        else:
            written = self._turntable(request, centre, distance, up)
        return {"ok": True, "files": written}

    # -- camera --------------------------------------------------------------------------------

    def _look(
        self, centre: Vector, distance: float, azimuth: float, elevation: float, up: str
    ) -> None:
        # Position and focal point are set directly: orbiting with azimuth/elevation drifts.
        a, e = math.radians(azimuth), math.radians(elevation)
        upward, front = UP[up], FRONT[up]
        right = np.cross(upward, front)
        direction = math.cos(e) * (math.cos(a) * front + math.sin(a) * right) + math.sin(e) * upward
        camera = self.window.camera
        camera.focal_point = _point(centre)
        camera.position = _point(centre + distance * direction)
        camera.view_up = _point(upward)

    def _draw(self, size: int) -> Image.Image:
        return self.canvas.draw(self.window, size)

    def _fit(self, centre: Vector, distance: float, up: str) -> tuple[Vector, float]:
        """Move in and re-centre so the object fills FILL of the picture (two small probes:
        the second corrects what perspective did to the first)."""
        for _ in range(2):
            centre, new_distance = self._probe(centre, distance, up)
            settled = abs(new_distance / distance - 1) < 0.05
            distance = new_distance
            if settled:  # the first probe was nearly right: no second one needed
                break
        return centre, distance

    def _probe(self, centre: Vector, distance: float, up: str) -> tuple[Vector, float]:
        self._look(centre, distance, VIEW_AZIMUTH, VIEW_ELEVATION, up)
        probe = self._draw(PROBE_SIZE)
        left, top, right, bottom = solid_box(np.asarray(probe.getchannel("A")))
        extent = max(right - left, bottom - top) / PROBE_SIZE
        camera = self.window.camera
        view_height = 2 * distance * math.tan(math.radians(camera.view_angle) / 2)
        position = np.array(camera.position, dtype=float)
        forward = (centre - position) / np.linalg.norm(centre - position)
        side = np.cross(forward, UP[up])
        side /= np.linalg.norm(side)
        lift = np.cross(side, forward)
        dx = ((left + right) / 2 - PROBE_SIZE / 2) / PROBE_SIZE * view_height
        dy = ((top + bottom) / 2 - PROBE_SIZE / 2) / PROBE_SIZE * view_height
        centre = centre + side * dx - lift * dy
        return centre, distance * extent / FILL

    # -- outputs -------------------------------------------------------------------------------

    def _thumbnail(
        self, request: dict[str, Any], centre: Vector, distance: float, up: str
    ) -> list[str]:
        centre, distance = self._fit(centre, distance, up)
        self._look(centre, distance, VIEW_AZIMUTH, VIEW_ELEVATION, up)
        picture = backdrop(self._draw(request["size"]), request["background"])
        picture.save(request["out"], "PNG", optimize=False)
        return [request["out"]]

    def _turntable(
        self, request: dict[str, Any], centre: Vector, distance: float, up: str
    ) -> list[str]:
        # One distance for every frame, from the bounding sphere: nothing is cut as it turns.
        frames = []
        count = request["frames"]
        for index in range(count):
            self._look(
                centre, distance * 0.95, VIEW_AZIMUTH + 360 * index / count, VIEW_ELEVATION, up
            )
            frames.append(backdrop(self._draw(request["size"]), request["background"]))
        written = []
        duration = request.get("frame_ms", 80)
        for path in request["outs"]:
            if path.endswith(".gif"):
                save_gif(frames, path, duration)
            else:
                frames[0].save(
                    path,
                    "WEBP",
                    save_all=True,
                    append_images=frames[1:],
                    duration=duration,
                    loop=0,
                    quality=80,
                    method=4,
                )
            written.append(path)
        return written


def solid_box(alpha: npt.NDArray[np.uint8]) -> tuple[float, float, float, float]:
    """The box around what is drawn, ignoring the faint, sparse strays splats often have."""
    rows, cols = np.nonzero(alpha > 48)
    if len(rows) == 0:
        raise RuntimeError("the model drew nothing on the picture")
    left, right = np.percentile(cols, [0.5, 99.5])
    top, bottom = np.percentile(rows, [0.5, 99.5])
    return float(left), float(top), float(right) + 1, float(bottom) + 1


def backdrop(picture: Image.Image, background: str) -> Image.Image:
    """Composite onto the backdrop colour, or keep transparency."""
    picture = picture.convert("RGBA")
    if background == "transparent":
        return picture
    canvas = Image.new("RGBA", picture.size, background)
    canvas.alpha_composite(picture)
    return canvas.convert("RGB")


def save_gif(frames: list[Image.Image], path: str, duration: int) -> None:
    """GIF has 256 colours: one shared palette keeps the frames from flickering."""
    rgb = [f.convert("RGB") for f in frames]
    sheet = Image.new("RGB", (rgb[0].width, rgb[0].height * min(len(rgb), 4)))
    for index, frame in enumerate(rgb[:4]):
        sheet.paste(frame, (0, frame.height * index))
    palette = sheet.quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    quantised = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in rgb]
    quantised[0].save(
        path,
        "GIF",
        save_all=True,
        append_images=quantised[1:],
        duration=duration,
        loop=0,
        optimize=False,
        disposal=1,
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "auto")
