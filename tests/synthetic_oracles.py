"""Test oracles for the synthetic products (:mod:`vitrieval.data.synthetic`): the canonical render of an identity
and the exact inverse of a view's viewpoint warp. They check that identities are distinct and views faithful; the
library itself never uses them (they reach into the generator's private rendering steps on purpose)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vitrieval.data.synthetic import _SUPERSAMPLE, _compose_view, _object_rgba, _pil_coeffs


def render_canonical(identity: int, size: int = 64, seed: int = 0,
                     background: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    """The product ``identity`` alone, frontal, centred, on a plain background, no lighting change (a catalogue
    shot). Not part of the generated dataset; used to check that identities are distinct and views faithful."""
    r = size * _SUPERSAMPLE
    obj = _object_rgba(int(identity), int(seed), r)
    bg = Image.new("RGB", (r, r), background)
    bg.paste(obj, (0, 0), obj)
    return bg.reduce(_SUPERSAMPLE)


def unwarp_view(image: Image.Image, identity: int, view: int, seed: int = 0,
                background: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    """Undo the known viewpoint warp of ``render_product(identity, view, image.width, seed)``.

    Maps the photo back onto the canonical object frame and blanks everything outside the object's silhouette,
    so the result is directly comparable with :func:`render_canonical`. Only the geometry is undone: lighting,
    blur, noise, occluders and out-of-frame parts remain. An oracle for tests, not a retrieval method.
    """
    size = image.width
    _, params = _compose_view(int(identity), int(view), size, int(seed))
    # output = object canvas at output scale; input = the photo at output scale
    s = np.diag([1.0 / _SUPERSAMPLE, 1.0 / _SUPERSAMPLE, 1.0])
    h_out = s @ params.homography @ np.linalg.inv(s)  # object coords (output scale) -> photo coords
    back = image.transform((size, size), Image.Transform.PERSPECTIVE, _pil_coeffs(h_out),
                           resample=Image.Resampling.BILINEAR)
    alpha = _object_rgba(int(identity), int(seed), size * _SUPERSAMPLE).getchannel("A").reduce(_SUPERSAMPLE)
    out = Image.new("RGB", (size, size), background)
    out.paste(back, (0, 0), alpha)
    return out
