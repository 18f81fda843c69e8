"""Synthetic MR heads on real anatomy: the MNI152 2009 template, deformed per subject, with brain tumours.

The demo model is trained on these heads and the sample scans are made of them, so that a newcomer sees
relevance on a real brain rather than on a cartoon. The anatomy comes from the ICBM 2009a symmetric MNI152
template and its grey- and white-matter probability maps as nilearn ships them (read only when heads are made;
the generated scans are what the repository ships). Skull and scalp, which the skull-stripped template lacks,
are layers at a fixed distance outside the brain.

Each subject is the template under a smooth random deformation (size, shape, asymmetry, pose), imaged in up to
four sequences (``t1``, ``t1ce``, ``t2``, ``flair``) from tissue-specific intensities, with a bias field, Rician
noise and a grid of its own spacing and axis orientation. Tumours are drawn in template space, so they deform
with the head and push the anatomy around them aside:

* glioma: in white matter, an enhancing rim around a necrotic core, surrounded by oedema (bright on T2/FLAIR)
  that spreads along white matter;
* meningioma: on the dura, a homogeneously enhancing dome under the inner table of the skull;
* pituitary: an adenoma at the sella, growing upwards;
* no_tumour: the head alone.

Three random streams come from one seed: the head (anatomy, pose, contrast, grid), the lesion (per class) and
the noise. The same seed with another label gives the same head and the same noise, so within a matched set the
volumes differ only at the lesion and the anatomy it pushes aside, and a classifier trained on such sets has no
shortcut to learn.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mri_lrp.phantoms import TISSUES, grid_affine, random_rotation

LABELS: tuple[str, ...] = ("glioma", "meningioma", "pituitary", "no_tumour")
SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
ORIENTATIONS: tuple[str, ...] = ("RAS", "LAS", "LPS", "LPI")
FIELD_OF_VIEW_MM: tuple[float, float, float] = (184.0, 220.0, 196.0)  # R-L, A-P, S-I extent of the grid
HEAD_CENTRE_MM: tuple[float, float, float] = (0.0, -17.0, 8.0)  # template frame: the middle of the head
TEMPLATE_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
TEMPLATE_NOTICE = (
    "Anatomy: ICBM 2009a Nonlinear Symmetric MNI152 template and its tissue probability maps, as shipped by "
    "nilearn. Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
    "Institute, McGill University. Permission to use, copy, modify, and distribute this software and its "
    "documentation for any purpose and without fee is hereby granted, provided that the above copyright notice "
    "appear in all copies. The authors and McGill University make no representations about the suitability of "
    "this software for any purpose. It is provided 'as is' without express or implied warranty. "
    "Fonov et al., NeuroImage 54(1), 2011; Fonov et al., NeuroImage 47 (S1), 2009."
)

# Relative intensity of each tissue in each sequence (white matter on T1 = 1).
_TISSUE_VALUES: dict[str, dict[str, float]] = {
    #         air   scalp  skull  diploe  csf   gm    wm
    "t1":    dict(air=0.0, scalp=0.85, skull=0.07, diploe=0.45, csf=0.16, gm=0.62, wm=1.0),
    "t1ce":  dict(air=0.0, scalp=0.85, skull=0.07, diploe=0.45, csf=0.16, gm=0.64, wm=1.0),
    "t2":    dict(air=0.0, scalp=0.55, skull=0.05, diploe=0.30, csf=1.25, gm=0.68, wm=0.45),
    "flair": dict(air=0.0, scalp=0.55, skull=0.05, diploe=0.30, csf=0.08, gm=0.80, wm=0.58),
}
# Lesion compartments in each sequence.
_LESION_VALUES: dict[str, dict[str, float]] = {
    "t1":    dict(oedema=0.55, rim=0.50, core=0.25, meningioma=0.60, pituitary=0.58),
    "t1ce":  dict(oedema=0.58, rim=1.55, core=0.25, meningioma=1.50, pituitary=1.30),
    "t2":    dict(oedema=0.95, rim=0.80, core=1.15, meningioma=0.72, pituitary=0.80),
    "flair": dict(oedema=1.15, rim=0.90, core=0.50, meningioma=0.82, pituitary=0.72),
}
_PAD = 28  # template voxels (1 mm) of room around the brain for the skull and scalp


@dataclass(frozen=True)
class Head:
    """One subject: a volume per sequence on one stored grid, the voxel -> world RAS affine, and the lesion.

    ``mask`` marks the whole lesion (for glioma that includes the oedema, as in the BraTS whole-tumour label);
    it is all zero for ``no_tumour``. ``parts`` splits it as BraTS 2023 labels do (1 necrotic core, 2 oedema,
    3 enhancing tumour). ``tissues`` labels the normal anatomy (``TISSUES`` codes) under any lesion.
    """

    volumes: dict[str, np.ndarray]  # sequence -> float32 (I, J, K)
    affine: np.ndarray               # float64 (4, 4)
    mask: np.ndarray                 # uint8 (I, J, K)
    parts: np.ndarray                # uint8 (I, J, K): 0, 1, 2, 3
    tissues: np.ndarray              # uint8 (I, J, K)
    label: str
    seed: int
    orientation: str

    @property
    def volume(self) -> np.ndarray:
        """The first sequence's volume: what a single-contrast scan of this head holds."""
        return next(iter(self.volumes.values()))

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


@dataclass(frozen=True)
class _Template:
    maps: np.ndarray        # (4, X, Y, Z) float32: grey matter, white matter, CSF, distance outside brain (mm)
    origin: np.ndarray      # world mm of voxel (0, 0, 0); 1 mm isotropic, axes RAS
    glioma_sites: np.ndarray  # (N, 3) mm: deep white matter of the cerebral hemispheres


def template_folder() -> Path:
    """Where nilearn keeps the MNI152 files; a clear error when nilearn is not installed."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the MNI152 template comes from nilearn: pip install --no-deps 'nilearn==0.14.1'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"{folder}: missing {', '.join(missing)}; install nilearn 0.14.1")
    return folder


@functools.lru_cache(maxsize=1)
def _template() -> _Template:
    """Tissue maps on a padded 1 mm grid, lightly smoothed so that coarser grids sample them without aliasing."""
    folder = template_folder()
    images = {key: nib.load(folder / name) for key, name in TEMPLATE_FILES.items()}
    arrays = {key: np.pad(np.asarray(img.dataobj, dtype=np.float32) / 255.0, _PAD) for key, img in images.items()}
    brain = ndimage.binary_fill_holes(arrays["t1"] > 0)
    outside = ndimage.distance_transform_edt(~brain).astype(np.float32)
    smooth = functools.partial(ndimage.gaussian_filter, sigma=0.8)
    gm, wm = smooth(arrays["gm"]), smooth(arrays["wm"])
    csf = np.clip(smooth(brain.astype(np.float32)) - gm - wm, 0.0, 1.0)
    origin = images["t1"].affine[:3, 3] - _PAD
    sites = np.argwhere((arrays["wm"] > 0.95) & (ndimage.distance_transform_edt(brain) > 18))
    sites = sites.astype(np.float64) + origin
    sites = sites[(np.abs(sites[:, 0]) > 14) & (sites[:, 2] > -12)][::7]  # hemispheres, above the temporal pole
    return _Template(np.stack([gm, wm, csf, outside]), origin, sites)


def generate_head(seed: int, label: str, *, sequences: tuple[str, ...] = ("t1ce",),
                  spacing_range: tuple[float, float] = (2.2, 2.8), orientation: str | None = None) -> Head:
    """One subject of class ``label`` imaged in ``sequences``, on a grid drawn from ``seed``."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, not {label!r}")
    unknown = [s for s in sequences if s not in SEQUENCES]
    if unknown or not sequences:
        raise ValueError(f"sequences must be drawn from {SEQUENCES}, not {sequences!r}")
    template = _template()
    head_rng = np.random.default_rng([seed, 0])
    head = _draw_head(head_rng, spacing_range, orientation)
    lesion = _draw_lesion(np.random.default_rng([seed, 1, LABELS.index(label)]), label, template)

    affine = grid_affine(head["shape"], head["spacing"], head["orientation"], head["centre"])
    world = _world_points(head["shape"], affine)
    q = _to_template(world, head)
    shifted = q if lesion is None else _mass_effect(q, lesion)
    gm, wm, csf_in, outside = _sample(template, shifted)
    fractions = _tissue_fractions(gm, wm, csf_in, outside, head)
    weights = _lesion_weights(q, lesion, gm, wm, csf_in, outside, head)

    noise_rng = np.random.default_rng([seed, 2])
    volumes = {}
    for sequence in SEQUENCES:  # each sequence draws its own noise, whichever sequences are asked for
        bias = _bias_field(noise_rng, world, head["centre"])
        n1 = noise_rng.standard_normal(len(q)).astype(np.float32)
        n2 = noise_rng.standard_normal(len(q)).astype(np.float32)
        if sequence in sequences:
            signal = _compose(fractions, weights, head["contrast"][sequence], head["lesion_contrast"][sequence])
            signal *= bias
            sigma = np.float32(head["noise"])
            volume = np.sqrt((signal + sigma * n1) ** 2 + (sigma * n2) ** 2) * np.float32(head["gain"])
            volumes[sequence] = volume.reshape(head["shape"]).astype(np.float32)
    mask = np.zeros(len(q), dtype=np.uint8)
    parts = np.zeros(len(q), dtype=np.uint8)
    for name, code in (("oedema", 2), ("meningioma", 3), ("pituitary", 3), ("rim", 3), ("core", 1)):
        if name in weights:
            inside = weights[name] > 0.5
            parts[inside] = code
            mask |= inside
    tissues = np.array([TISSUES[n] for n in _TISSUE_CODES], dtype=np.uint8)[np.argmax(fractions, axis=0)]
    return Head(volumes={s: volumes[s] for s in sequences}, affine=affine, mask=mask.reshape(head["shape"]),
                parts=parts.reshape(head["shape"]), tissues=tissues.reshape(head["shape"]), label=label,
                seed=seed, orientation=head["orientation"])


def matched_set(seed: int, labels: tuple[str, ...] = LABELS, **kwargs: object) -> list[Head]:
    """One head per label from the same seed: same anatomy, grid and noise, only the lesion differs."""
    return [generate_head(seed, label, **kwargs) for label in labels]  # type: ignore[arg-type]


_TISSUE_CODES = ("background", "scalp", "skull", "skull", "csf", "grey_matter", "white_matter")
_FRACTION_NAMES = ("air", "scalp", "skull", "diploe", "csf", "gm", "wm")


def _draw_head(rng: np.random.Generator, spacing_range: tuple[float, float], orientation: str | None) -> dict:
    """Pose, shape, shell thickness, contrast, noise and grid of one subject."""
    low, high = spacing_range
    in_plane = rng.uniform(low, high)
    spacing = (in_plane, in_plane, min(high + 0.2, in_plane * rng.uniform(1.0, 1.15)))
    drawn = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    shape = tuple(int(round(f / s)) for f, s in zip(FIELD_OF_VIEW_MM, spacing, strict=True))
    rotation = random_rotation(rng, 6.0)
    scale = rng.uniform(0.93, 1.07, size=3) * rng.uniform(0.95, 1.05)
    return {
        "spacing": spacing, "orientation": orientation or drawn, "shape": shape,
        "centre": np.asarray(HEAD_CENTRE_MM) + rng.uniform(-5.0, 5.0, size=3),
        "rotation": rotation, "scale": scale, "shift": rng.uniform(-4.0, 4.0, size=3),
        "asymmetry": rng.uniform(-0.04, 0.04),
        "warp": rng.normal(0.0, 2.5, size=(3, 5, 5, 5)),
        "csf": rng.uniform(1.0, 2.5), "skull": rng.uniform(4.5, 7.5), "scalp": rng.uniform(4.0, 7.0),
        "contrast": {s: {t: v * rng.uniform(0.93, 1.07) for t, v in _TISSUE_VALUES[s].items()} for s in SEQUENCES},
        "lesion_contrast": {s: {t: v * rng.uniform(0.93, 1.07) for t, v in _LESION_VALUES[s].items()}
                            for s in SEQUENCES},
        "noise": rng.uniform(0.015, 0.035), "gain": rng.uniform(400.0, 1400.0),
    }


def _world_points(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World RAS mm of every voxel centre, (N, 3) in C order."""
    index = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    return index @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)


def _to_template(world: np.ndarray, head: dict) -> np.ndarray:
    """Template mm of every subject point: undo pose and size, then a smooth random warp (shape, asymmetry)."""
    centred = world - head["centre"].astype(np.float32)
    q = (centred @ head["rotation"].astype(np.float32)) / head["scale"].astype(np.float32)
    q[:, 0] *= 1.0 + head["asymmetry"] * np.tanh(q[:, 0] / 30.0)  # one hemisphere a little larger
    coarse = (centred / np.asarray(FIELD_OF_VIEW_MM, dtype=np.float32) + 0.5) * 4.0  # 5 control points per axis
    warp = np.stack([ndimage.map_coordinates(head["warp"][axis], coarse.T, order=3, mode="nearest")
                     for axis in range(3)], axis=1)
    return q + warp.astype(np.float32) + np.asarray(HEAD_CENTRE_MM, dtype=np.float32) \
        + head["shift"].astype(np.float32)


def _sample(template: _Template, q: np.ndarray) -> tuple[np.ndarray, ...]:
    """Grey matter, white matter, CSF inside the brain and distance outside the brain at template points."""
    index = (q - template.origin.astype(np.float32)).T
    return tuple(ndimage.map_coordinates(m, index, order=1, mode="nearest") for m in template.maps)


def _step(x: np.ndarray, edge: float = 0.8) -> np.ndarray:
    """A soft 0 -> 1 step at x = 0, ``edge`` mm wide: partial volume at tissue borders."""
    return np.clip(0.5 + x / edge, 0.0, 1.0)


def _tissue_fractions(gm: np.ndarray, wm: np.ndarray, csf_in: np.ndarray, outside: np.ndarray,
                      head: dict) -> np.ndarray:
    """(7, N) fractions of air, scalp, skull, diploe, CSF, grey and white matter; they sum to 1."""
    brain = np.clip(gm + wm + csf_in, 0.0, 1.0)
    rest = 1.0 - brain
    inner = head["csf"]
    table = inner + head["skull"]
    outer = table + head["scalp"]
    csf_shell = rest * _step(inner - outside)
    head_part = rest * _step(outer - outside) - csf_shell
    scalp = rest * _step(outer - outside) * _step(outside - table)
    bone = np.clip(head_part - scalp, 0.0, None)
    middle = np.abs(outside - (inner + table) / 2.0)
    diploe = bone * _step(head["skull"] * 0.2 - middle)
    skull = bone - diploe
    air = np.clip(1.0 - brain - csf_shell - scalp - bone, 0.0, None)
    return np.stack([air, scalp, skull, diploe, csf_in + csf_shell, gm, wm]).astype(np.float32)


def _compose(fractions: np.ndarray, weights: dict[str, np.ndarray], tissue: dict[str, float],
             lesion: dict[str, float]) -> np.ndarray:
    """Signal of one sequence: the tissue mixture, then each lesion compartment painted over it."""
    values = np.array([tissue[name] for name in _FRACTION_NAMES], dtype=np.float32)
    image = np.tensordot(values, fractions, axes=1)
    for name in ("oedema", "meningioma", "pituitary", "rim", "core"):
        if name in weights:
            w = weights[name]
            image = image * (1.0 - w) + w * np.float32(lesion[name])
    return image


def _bias_field(rng: np.random.Generator, world: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """A smooth multiplicative field (about +-15 %): low-order polynomial in head coordinates."""
    x, y, z = ((world - centre.astype(np.float32)) / 100.0).T
    terms = (x, y, z, x * y, y * z, x * z, x * x, y * y, z * z)
    coefficients = rng.normal(0.0, 0.08, size=len(terms))
    return np.exp(sum(c * t for c, t in zip(coefficients, terms, strict=True))).astype(np.float32)


def _draw_lesion(rng: np.random.Generator, label: str, template: _Template) -> dict | None:
    """Centre, size, shape and mass effect of the lesion, in template mm; None for ``no_tumour``."""
    if label == "no_tumour":
        return None
    ripple = (rng.normal(size=(6, 3)), rng.uniform(0, 2 * np.pi, size=6))
    if label == "glioma":
        centre = template.glioma_sites[int(rng.integers(len(template.glioma_sites)))] + rng.normal(0, 2, 3)
        radius = rng.uniform(10.0, 17.0)
        return {"kind": label, "centre": centre, "radii": radius * rng.uniform(0.8, 1.2, size=3),
                "necrosis": rng.uniform(0.35, 0.6), "oedema": rng.uniform(1.7, 2.4), "ripple": ripple,
                "roughness": 0.12, "push": rng.uniform(0.25, 0.4)}
    if label == "meningioma":
        radius = rng.uniform(12.0, 19.0)
        surface = _dural_point(rng, template)
        return {"kind": label, "centre": surface, "radii": np.full(3, radius) * rng.uniform(0.9, 1.1, size=3),
                "ripple": ripple, "roughness": 0.04, "push": rng.uniform(0.12, 0.22)}
    radius = rng.uniform(9.0, 13.0)
    centre = np.array([rng.normal(0, 0.7), rng.uniform(-1.0, 4.0), rng.uniform(-30.0, -26.0) + 0.3 * radius])
    return {"kind": "pituitary", "centre": centre, "radii": radius * np.array([0.9, 0.85, 1.2]),
            "ripple": ripple, "roughness": 0.05, "push": rng.uniform(0.12, 0.22)}


def _dural_point(rng: np.random.Generator, template: _Template) -> np.ndarray:
    """A point on the brain's outer surface over the convexity or the falx: where a meningioma arises."""
    distance = template.maps[3]
    start = np.array(HEAD_CENTRE_MM) + np.array([0.0, 0.0, 10.0])
    while True:
        direction = rng.normal(size=3)
        direction[2] = abs(direction[2]) + 0.3  # upper half: convexity and parasagittal
        direction /= np.linalg.norm(direction)
        for step in np.arange(20.0, 110.0, 1.0):
            point = start + direction * step
            index = point - template.origin
            if ndimage.map_coordinates(distance, index[:, None], order=1)[0] > 1.0:
                return point


def _mass_effect(q: np.ndarray, lesion: dict) -> np.ndarray:
    """Template points to sample the anatomy at: near the lesion they move towards its centre, which pushes the
    surrounding anatomy outwards in the subject. The shift fades to nothing at twice the lesion's radius, so
    the rest of the head stays as it is."""
    centre = lesion["centre"].astype(np.float32)
    offset = q - centre
    reach = 2.0 * float(np.max(lesion["radii"]))
    fall = np.clip(1.0 - np.sum(offset * offset, axis=1) / (reach * reach), 0.0, 1.0) ** 2
    return q - offset * (lesion["push"] * fall.astype(np.float32))[:, None]


def _rho(q: np.ndarray, lesion: dict, radii: np.ndarray) -> np.ndarray:
    """Normalised distance from the lesion centre (1 at its surface), made irregular by a few smooth ripples."""
    offset = (q - lesion["centre"].astype(np.float32)) / radii.astype(np.float32)
    rho = np.sqrt(np.sum(offset * offset, axis=1))
    waves, phases = lesion["ripple"]
    ripple = sum(np.sin(1.8 * offset @ waves[i].astype(np.float32) + phases[i]) for i in range(len(phases)))
    return rho + lesion["roughness"] * ripple / np.sqrt(len(phases))


def _lesion_weights(q: np.ndarray, lesion: dict | None, gm: np.ndarray, wm: np.ndarray, csf_in: np.ndarray,
                    outside: np.ndarray, head: dict) -> dict[str, np.ndarray]:
    """Soft membership (0..1) of every point in each lesion compartment."""
    if lesion is None:
        return {}
    edge = 0.06
    rho = _rho(q, lesion, lesion["radii"])
    body = np.clip(0.5 + (1.0 - rho) / (2 * edge), 0.0, 1.0)
    if lesion["kind"] == "glioma":
        brain = _step(gm + wm + csf_in - 0.5, 0.2)
        rho_oedema = _rho(q, lesion, lesion["radii"] * lesion["oedema"])
        white = np.clip((wm + 0.3 * gm - 0.25) / 0.4, 0.0, 1.0)
        oedema = np.clip(0.5 + (1.0 - rho_oedema) / 0.25, 0.0, 1.0) * white * brain
        core = np.clip(0.5 + (lesion["necrosis"] - rho) / (2 * edge), 0.0, 1.0)
        return {"oedema": oedema, "rim": body * brain, "core": core * brain}
    if lesion["kind"] == "meningioma":
        under_bone = _step(head["csf"] + 0.5 - outside)  # under the inner table, not in the skull
        return {"meningioma": body * under_bone}
    return {"pituitary": body}
