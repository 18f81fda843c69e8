"""Synthetic T1-weighted head phantoms with brain tumours of known class and position.

They exist so the demo model can be trained, the sample scans shipped and relevance maps scored against a
ground-truth mask without any patient data. Anatomy is drawn analytically in a head-centred frame and
sampled on the stored voxel grid through its affine, so any spacing or axis orientation gives the same head.

Three independent random streams come from one seed: the head (anatomy, contrast, bias field, grid), the
tumour, and the noise. The same seed with a different label therefore gives the same head and the same
noise; the volumes differ only where the lesion is. This is what keeps the classes free of shortcuts: a
classifier can only tell them apart by the lesion itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LABELS: tuple[str, ...] = ("glioma", "meningioma", "pituitary", "no_tumour")
ORIENTATIONS: tuple[str, ...] = ("RAS", "LAS", "LPS")
FIELD_OF_VIEW_MM: tuple[float, float, float] = (192.0, 224.0, 200.0)  # R-L, A-P, S-I extent of the grid

#: Codes of the tissue label map (``Phantom.tissues``): the normal anatomy, drawn before any lesion.
TISSUES: dict[str, int] = {"background": 0, "scalp": 1, "skull": 2, "csf": 3, "grey_matter": 4,
                           "white_matter": 5, "ventricle": 6, "soft_tissue": 7, "pituitary_gland": 8}

_AXIS_OF_CODE = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass(frozen=True)
class Phantom:
    """One generated scan: data on its stored grid, the voxel -> world RAS affine, and the lesion mask.

    ``mask`` marks the whole lesion (for glioma that includes the surrounding oedema, as in the BraTS
    whole-tumour convention); it is all zero for ``no_tumour``. ``tissues`` labels the normal anatomy
    (``TISSUES`` codes) under any lesion: a ground-truth atlas of the phantom.
    """

    volume: np.ndarray        # float32 (I, J, K)
    affine: np.ndarray        # float64 (4, 4)
    mask: np.ndarray          # uint8 (I, J, K)
    tissues: np.ndarray       # uint8 (I, J, K), TISSUES codes of the head without the lesion
    label: str
    seed: int
    orientation: str
    lesion_center_mm: tuple[float, float, float] | None  # world RAS, None for no_tumour

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def grid_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float], orientation: str,
                center_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Affine of a grid with stored axes along ``orientation`` (e.g. "LPS"), centred on ``center_mm``."""
    affine = np.eye(4)
    for stored, code in enumerate(_check_orientation(orientation)):
        world, sign = _AXIS_OF_CODE[code]
        affine[:3, stored] = 0.0
        affine[world, stored] = sign * spacing[stored]
    middle = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(center_mm, dtype=float) - affine[:3, :3] @ middle
    return affine


def _check_orientation(orientation: str) -> str:
    """Upper-case axis codes, one per world axis (like "RAS" or "PSL"); a ValueError names a bad value."""
    codes = orientation.upper()
    if len(codes) != 3 or sorted(_AXIS_OF_CODE[c][0] for c in codes if c in _AXIS_OF_CODE) != [0, 1, 2]:
        raise ValueError(f"orientation must be three axis codes like 'RAS', not {orientation!r}")
    return codes


def generate_phantom(seed: int, label: str | None = None, *, shape: tuple[int, int, int] | None = None,
                     spacing: tuple[float, float, float] | None = None, orientation: str | None = None,
                     spacing_range: tuple[float, float] = (1.5, 2.5),
                     field_of_view_mm: tuple[float, float, float] = FIELD_OF_VIEW_MM) -> Phantom:
    """Draw one head phantom from ``seed``.

    label: one of LABELS, or None to draw it from the seed. spacing: mm per stored axis, or None to draw an
    in-plane spacing from ``spacing_range`` and a slice spacing at least as large. orientation: axis codes of
    the stored grid, or None to draw one of ORIENTATIONS. shape: stored grid size, or None for the size that
    covers ``field_of_view_mm`` (a head) at that spacing.
    """
    if label is None:
        label = LABELS[int(np.random.default_rng([seed, 3]).integers(len(LABELS)))]
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS} or None, not {label!r}")
    head_rng = np.random.default_rng([seed, 0])
    tumour_rng = np.random.default_rng([seed, 1])
    noise_rng = np.random.default_rng([seed, 2])

    # The grid. Draws happen in a fixed order whatever was passed, so options never shift the anatomy.
    in_plane = head_rng.uniform(*spacing_range)
    through = head_rng.uniform(in_plane, spacing_range[1])
    drawn_orientation = ORIENTATIONS[int(head_rng.integers(len(ORIENTATIONS)))]
    orientation = (orientation or drawn_orientation).upper()
    if spacing is None:
        spacing = (in_plane, in_plane, through)
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    if shape is None:
        extent = [field_of_view_mm[_AXIS_OF_CODE[c][0]] for c in _check_orientation(orientation)]
        shape = tuple(int(np.ceil(e / s)) for e, s in zip(extent, spacing, strict=True))  # type: ignore[assignment]
    affine = grid_affine(shape, spacing, orientation)  # type: ignore[arg-type]

    head = _as_float32(_draw_head(head_rng))
    q = _head_coordinates(shape, affine, head["center"], head["rotation"])  # type: ignore[arg-type]
    edge = 0.5 * float(min(spacing))  # soft tissue boundaries, about one voxel wide (partial volume)
    image, anatomy = _render_head(q, head, edge)

    mask = np.zeros(image.shape, dtype=bool)
    center_local: np.ndarray | None = None
    if label != "no_tumour":
        draw = {"glioma": _draw_glioma, "meningioma": _draw_meningioma, "pituitary": _draw_pituitary}[label]
        lesion = _as_float32(draw(tumour_rng, head, anatomy))
        box = _lesion_box(lesion, head, affine, image.shape)
        local = {k: (v[box] if isinstance(v, np.ndarray) and v.ndim == 3 else v) for k, v in anatomy.items()}
        mask[box] = _render_lesion(image[box], lesion, local, [c[box] for c in q], edge)
        center_local = lesion["center"]

    image *= _bias_field(q, head["bias"])
    sigma = head["noise"]
    real = image + noise_rng.standard_normal(image.shape, dtype=np.float32) * sigma
    imag = noise_rng.standard_normal(image.shape, dtype=np.float32) * sigma
    volume = (np.sqrt(real * real + imag * imag) * head["gain"]).astype(np.float32)

    center_world = None
    if center_local is not None:
        world = head["rotation"] @ center_local + head["center"]
        center_world = tuple(float(v) for v in world)
    return Phantom(volume=volume, affine=affine, mask=mask.astype(np.uint8), tissues=anatomy["tissue"],
                   label=label, seed=seed,
                   orientation=orientation, lesion_center_mm=center_world)  # type: ignore[arg-type]


def _as_float32(params: dict) -> dict:
    """Parameters as float32 arrays and Python floats, so float32 volumes are never promoted to float64."""
    out: dict = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out[key] = _as_float32(value)
        elif isinstance(value, tuple):
            out[key] = tuple(np.asarray(v, dtype=np.float32) for v in value)
        elif isinstance(value, np.ndarray):
            out[key] = value.astype(np.float32)
        elif isinstance(value, (float, np.floating)):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def _lesion_box(lesion: dict, head: dict, affine: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The voxel box that holds the whole lesion (with oedema and margin): lesions are drawn only there."""
    reach = float(np.max(lesion["radii"])) * (1.0 + float(np.sum(lesion["ripple"][2])))
    reach = reach * float(lesion.get("oedema_extent", 1.0)) * (1.0 + float(np.sum(
        lesion.get("oedema_ripple", ((), (), np.zeros(1)))[2]))) + 6.0
    world = head["rotation"].astype(float) @ lesion["center"] + head["center"]
    voxel = np.linalg.solve(affine, np.append(world, 1.0))[:3]
    half = reach / np.linalg.norm(affine[:3, :3], axis=0)
    lo = np.clip(np.floor(voxel - half), 0, shape).astype(int)
    hi = np.clip(np.ceil(voxel + half) + 1, 0, shape).astype(int)
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


def random_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """A small random head tilt: patients never lie perfectly straight in the scanner."""
    angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, size=3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _draw_head(rng: np.random.Generator) -> dict:
    """All head parameters, drawn the same way for every class."""
    scale = rng.uniform(0.9, 1.04)
    axes = np.array([72.0, 90.0, 80.0]) * scale * rng.uniform(0.95, 1.05, size=3)
    wm = 1.0
    return {
        "axes": axes,
        "center": rng.normal(0.0, 3.0, size=3),
        "rotation": random_rotation(rng, 8.0),
        "shape_waves": (rng.normal(size=(4, 3)), rng.uniform(0, 2 * np.pi, 4), rng.uniform(-0.02, 0.02, 4)),
        "scalp": rng.uniform(4.0, 7.0),
        "skull": rng.uniform(5.0, 8.0),
        "csf": rng.uniform(1.5, 3.0),
        "base": -axes[2] * rng.uniform(0.42, 0.52),  # skull base height in the head frame (mm)
        "folds": (rng.normal(size=(10, 3)), rng.uniform(17.0, 28.0, size=10), rng.uniform(0, 2 * np.pi, 10)),
        "cortex": rng.uniform(2.5, 3.5),
        "sulcus_depth": rng.uniform(9.0, 13.0),
        "ventricles": {
            "offset": rng.uniform(5.0, 8.0), "radii": rng.uniform([4.0, 20.0, 6.0], [7.0, 28.0, 9.0]),
            "center": rng.uniform([-1.5, -6.0, 8.0], [1.5, 2.0, 16.0]), "bend": rng.uniform(0.005, 0.012),
        },
        "intensity": {
            "scalp": rng.uniform(0.85, 1.05) * wm, "skull": rng.uniform(0.05, 0.15) * wm,
            "marrow": rng.uniform(0.45, 0.6) * wm, "csf": rng.uniform(0.12, 0.22) * wm,
            "gm": rng.uniform(0.55, 0.68) * wm, "wm": wm, "soft": rng.uniform(0.4, 0.55) * wm,
        },
        "bias": rng.normal(0.0, [0.12, 0.12, 0.12, 0.06, 0.06, 0.06]),
        "noise": rng.uniform(0.015, 0.04),
        "gain": rng.uniform(600.0, 1400.0),
    }


def _head_coordinates(shape: tuple[int, int, int], affine: np.ndarray, center: np.ndarray,
                      rotation: np.ndarray) -> list[np.ndarray]:
    """Head-frame millimetres (x right, y anterior, z superior) of every voxel, as three broadcast arrays."""
    to_head = rotation.T @ affine[:3, :3]
    offset = rotation.T @ (affine[:3, 3] - center)
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    out = []
    for row in range(3):
        value = np.float32(offset[row])
        value = value + np.float32(to_head[row, 0]) * axes[0][:, None, None]
        value = value + np.float32(to_head[row, 1]) * axes[1][None, :, None]
        out.append(value + np.float32(to_head[row, 2]) * axes[2][None, None, :])
    return out


def _step(distance: np.ndarray, edge: float) -> np.ndarray:
    """A soft 0 -> 1 step at distance 0 (mm), ``edge`` mm wide: a partial-volume boundary."""
    return np.clip(distance / (2.0 * edge) + 0.5, 0.0, 1.0)


def _mix(image: np.ndarray, value: float | np.ndarray, weight: np.ndarray) -> None:
    """In place: blend ``value`` into ``image`` where ``weight`` (0..1) is set."""
    image += weight * (value - image)


def _render_head(q: list[np.ndarray], head: dict, edge: float) -> tuple[np.ndarray, dict]:
    """Scalp, skull with marrow, CSF, folded cortex over white matter, ventricles, skull base and sella."""
    x, y, z = q
    ax, ay, az = head["axes"]
    rho = np.sqrt((x / ax) ** 2 + (y / ay) ** 2 + (z / az) ** 2)
    directions, phases, amplitudes = head["shape_waves"]
    safe = np.maximum(rho, 1e-3)
    for d, p, a in zip(directions, phases, amplitudes, strict=True):  # a slightly irregular head outline
        rho = rho * (1.0 + a * np.sin(2.0 * (d[0] * x / (ax * safe) + d[1] * y / (ay * safe)
                                              + d[2] * z / (az * safe)) + p))
    depth = (1.0 - rho) * float(np.mean(head["axes"]))  # approximate mm below the scalp surface
    tone = head["intensity"]

    image = np.zeros(rho.shape, dtype=np.float32)
    tissue = np.zeros(rho.shape, dtype=np.uint8)

    def paint(value: float, weight: np.ndarray, name: str) -> None:
        _mix(image, value, weight)
        tissue[weight > 0.5] = TISSUES[name]

    paint(tone["scalp"], _step(depth, edge), "scalp")
    skull_outer = head["scalp"]
    skull_inner = skull_outer + head["skull"]
    paint(tone["skull"], _step(depth - skull_outer, edge), "skull")
    marrow = _step(depth - skull_outer - 0.35 * head["skull"], edge) * _step(
        skull_outer + 0.65 * head["skull"] - depth, edge)
    paint(tone["marrow"], marrow, "skull")
    inside_skull = _step(depth - skull_inner, edge)
    base = head["base"]
    below_base = _step(base - 3.0 - z, edge)  # skull base: a bony floor, soft tissue underneath
    floor = _step(z - (base - 3.0), edge) * _step(base + 1.0 - z, edge)
    paint(tone["csf"], inside_skull, "csf")

    brain_depth = depth - skull_inner - head["csf"]
    brain = _step(brain_depth, edge) * _step(z - (base + 1.0), edge)
    paint(tone["gm"], brain, "grey_matter")

    fold = np.zeros_like(x)
    waves, wavelengths, phases = head["folds"]
    for w, lam, p in zip(waves, wavelengths, phases, strict=True):
        k = (2.0 * np.pi / lam) * w / np.linalg.norm(w)
        fold += np.sin(np.float32(k[0]) * x + np.float32(k[1]) * y + np.float32(k[2]) * z + np.float32(p))
    fold *= np.float32(np.sqrt(2.0 / len(waves)))
    afold = np.abs(fold)
    wm_depth = head["cortex"] + head["sulcus_depth"] * np.clip(1.0 - afold / 0.55, 0.0, 1.0)
    white = brain * _step(brain_depth - wm_depth - 4.0, edge) * _step(z - (base + 8.0), edge)
    paint(tone["wm"], white, "white_matter")
    sulcus = brain * _step(head["sulcus_depth"] * np.clip(1.0 - afold / 0.18, 0.0, 1.0) - brain_depth, edge)
    paint(tone["csf"], sulcus, "csf")

    v = head["ventricles"]
    vx, vy, vz = x - v["center"][0], y - v["center"][1], z - v["center"][2]
    vz = vz - v["bend"] * vy * vy  # the lateral ventricles arch over the thalami
    rx, ry, rz = v["radii"]
    ventricle = np.zeros_like(x)
    for side in (-1.0, 1.0):
        r = np.sqrt(((vx - side * v["offset"]) / rx) ** 2 + (vy / ry) ** 2 + (vz / rz) ** 2)
        ventricle = np.maximum(ventricle, _step((1.0 - r) * rx, edge))
    third = np.sqrt((vx / 1.5) ** 2 + ((vy + 4.0) / 9.0) ** 2 + ((z - v["center"][2] + 14.0) / 7.0) ** 2)
    ventricle = np.maximum(ventricle, _step((1.0 - third) * 1.5, edge))
    paint(tone["csf"], ventricle * brain, "ventricle")

    paint(tone["soft"], inside_skull * below_base, "soft_tissue")
    paint(tone["skull"], inside_skull * floor, "skull")
    sella = np.array([0.0, 8.0, base + 2.5], dtype=np.float32)
    gland = np.sqrt((x / 5.0) ** 2 + ((y - sella[1]) / 4.0) ** 2 + ((z - sella[2]) / 3.0) ** 2)
    paint(tone["gm"] * 1.1, _step((1.0 - gland) * 3.0, edge), "pituitary_gland")

    anatomy = {"tissue": tissue, "depth": depth, "brain_depth": brain_depth, "brain": brain, "white": white,
               "ventricle": ventricle, "skull_inner": skull_inner, "sella": sella, "rho_scale": float(
                   np.mean(head["axes"]))}
    return image, anatomy


def _lobulated_radius(rng: np.random.Generator, amount: float, terms: int = 5) -> tuple:
    """Random low-order ripples of a blob's outline, so no two lesions share a shape."""
    return rng.normal(size=(terms, 3)), rng.uniform(0, 2 * np.pi, terms), rng.uniform(0.0, amount, terms)


def _blob(q: list[np.ndarray], center: np.ndarray, radii: np.ndarray, ripple: tuple) -> np.ndarray:
    """Signed distance (mm, positive inside) to an ellipsoid whose outline is modulated by ``ripple``."""
    dx, dy, dz = (q[i] - np.float32(center[i]) for i in range(3))
    r = np.sqrt((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2)
    norm = np.maximum(np.sqrt(dx * dx + dy * dy + dz * dz), 1e-3)
    outline = np.ones_like(r)
    directions, phases, amounts = ripple
    for d, p, a in zip(directions, phases, amounts, strict=True):
        outline += a * np.sin(2.0 * (d[0] * dx + d[1] * dy + d[2] * dz) / norm + p)
    return (outline - r) * float(np.mean(radii))


def _draw_glioma(rng: np.random.Generator, head: dict, anatomy: dict) -> dict:
    """Intra-axial: anywhere in the cerebral white matter, irregular, necrotic core, enhancing rim, oedema."""
    ax, ay, az = head["axes"]
    v = head["ventricles"]
    scale = np.array([ax, ay, az]) * 0.6
    while True:  # rejection sampling: inside the cerebrum, above the skull base, off the ventricles
        point = rng.uniform(-1.0, 1.0, size=3) * scale
        inside = np.sum((point / scale) ** 2) < 1.0
        lateral = abs(point[0]) > v["offset"] + v["radii"][0] + 6.0
        clear = lateral or abs(point[1] - v["center"][1]) > v["radii"][1]
        if inside and clear and point[2] > head["base"] + 30.0:
            break
    radius = rng.uniform(8.0, 18.0)
    return {
        "kind": "glioma", "center": point, "radii": radius * rng.uniform(0.8, 1.2, size=3),
        "ripple": _lobulated_radius(rng, 0.2), "necrosis": rng.uniform(0.0, 0.5),
        "rim": rng.uniform(1.2, 1.5), "core": rng.uniform(0.25, 0.45),
        "oedema_extent": rng.uniform(1.25, 1.6), "oedema_ripple": _lobulated_radius(rng, 0.3),
        "oedema": rng.uniform(0.6, 0.8),
    }


def _draw_meningioma(rng: np.random.Generator, head: dict, anatomy: dict) -> dict:
    """Extra-axial: a dome on the inner table of the skull anywhere over the convexity, bright and smooth."""
    while True:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        if direction[2] > -0.05:
            break
    axes = head["axes"]
    rho_inner = 1.0 - head["scalp"] / anatomy["rho_scale"] - head["skull"] / anatomy["rho_scale"]
    on_surface = direction / np.sqrt(np.sum((direction / axes) ** 2)) * rho_inner
    radius = rng.uniform(9.0, 18.0)
    return {"kind": "meningioma", "center": on_surface, "radii": radius * rng.uniform(0.85, 1.15, size=3),
            "ripple": _lobulated_radius(rng, 0.05), "brightness": rng.uniform(1.15, 1.4)}


def _draw_pituitary(rng: np.random.Generator, head: dict, anatomy: dict) -> dict:
    """Midline, in the sella: a small, rounded adenoma growing upward from the gland."""
    radius = rng.uniform(6.0, 11.0)
    sella = anatomy["sella"]
    center = np.array([rng.normal(0.0, 1.0), sella[1] + rng.normal(0.0, 1.5), sella[2] + 0.6 * radius])
    return {"kind": "pituitary", "center": center, "radii": radius * rng.uniform(0.85, 1.15, size=3),
            "ripple": _lobulated_radius(rng, 0.08), "brightness": rng.uniform(1.1, 1.4),
            "texture": rng.uniform(0.0, 0.1)}


def _render_lesion(image: np.ndarray, lesion: dict, anatomy: dict, q: list[np.ndarray],
                   edge: float) -> np.ndarray:
    """Paint the lesion into ``image`` in place (it replaces tissue; no mass effect) and return its mask."""
    inside = _blob(q, lesion["center"], lesion["radii"], lesion["ripple"])
    wm = 1.0
    if lesion["kind"] == "glioma":
        outer = _blob(q, lesion["center"], lesion["radii"] * lesion["oedema_extent"], lesion["oedema_ripple"])
        oedema = _step(outer, 2.0 * edge) * anatomy["brain"] * (1.0 - anatomy["ventricle"])
        oedema *= 0.4 + 0.6 * anatomy["white"]  # oedema spreads along the white matter
        image *= 1.0 - oedema * (1.0 - lesion["oedema"])
        core_depth = lesion["necrosis"] * float(np.mean(lesion["radii"]))
        tumour = _step(inside, edge) * anatomy["brain"]
        rim = tumour * _step(core_depth - inside + 1e-3, edge) if core_depth > 0 else tumour
        _mix(image, lesion["rim"] * wm, tumour)
        _mix(image, lesion["core"] * wm, tumour * (1.0 - rim))
        mask = np.maximum(oedema, tumour) > 0.5
    elif lesion["kind"] == "meningioma":
        tumour = _step(inside, 0.5 * edge) * _step(anatomy["depth"] - anatomy["skull_inner"], edge)
        _mix(image, lesion["brightness"] * wm, tumour)
        mask = tumour > 0.5
    else:
        tumour = _step(inside, edge)
        x, y, z = q
        texture = 1.0 + lesion["texture"] * np.sin(0.7 * x) * np.sin(0.6 * y + 1.0) * np.sin(0.8 * z)
        _mix(image, lesion["brightness"] * wm * texture, tumour)
        mask = tumour > 0.5
    return mask


def _bias_field(q: list[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
    """Smooth multiplicative receive-coil inhomogeneity over the head (about +-20 %)."""
    x, y, z = (c / np.float32(100.0) for c in q)
    a = coefficients
    field = a[0] * x + a[1] * y + a[2] * z + a[3] * x * y + a[4] * y * z + a[5] * x * z
    return np.exp(field).astype(np.float32)
