"""The per-position Gaussians in a model file: full whitening matrices as packed lower
triangles (float16 or float32), or minor components as rows (int8 with per-row scales, float16
or float32) and isotropic precisions. Written in the precision the fit already rounded to, so
a saved model scores exactly as the fitted one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from padim.errors import PadimError

if TYPE_CHECKING:
    import torch

    from padim.core.gaussian import GaussianModel
    from padim.core.minor import MinorGaussianModel
    from padim.model.tensorfile import Chunked

TRIL = "gaussian.whitening_tril"
FULL_V1 = "gaussian.whitening"  # format 1: full float32 matrices
ROWS = "gaussian.minor_rows"
ROW_SCALES = "gaussian.minor_row_scales"  # int8 rows only
WEIGHTS = "gaussian.minor_weights"
ISO = "gaussian.minor_iso"


def gaussian_tensors(
    gaussian: GaussianModel | MinorGaussianModel, storage: str
) -> dict[str, torch.Tensor | Chunked]:
    """The file tensors of the Gaussians (mean and std are written by the caller)."""
    import torch

    from padim.core.minor import MinorGaussianModel
    from padim.model.tensorfile import Chunked

    if isinstance(gaussian, MinorGaussianModel):
        out: dict[str, torch.Tensor | Chunked] = {WEIGHTS: gaussian.weights, ISO: gaussian.iso}
        codes = gaussian.int8_codes()
        if codes is not None:
            out[ROWS], out[ROW_SCALES] = codes
        else:
            out[ROWS] = gaussian.rows.to(getattr(torch, storage))
        return out
    dtype = getattr(torch, storage)  # validated: float16 or float32 for full models
    return {TRIL: Chunked(dtype, gaussian.tril_shape, lambda: gaussian.tril_chunks(dtype))}


def read_gaussian(
    tensors: dict[str, torch.Tensor], mean: torch.Tensor, dim: int, components: int
) -> GaussianModel | MinorGaussianModel:
    """The Gaussians of a model file, checked against the means (P, dim)."""
    from padim.core.gaussian import GaussianModel, tril_size
    from padim.core.minor import MinorGaussianModel, dequantise_rows

    p = mean.shape[0]
    if ROWS in tensors:
        rows, iso, scales = tensors[ROWS], tensors.get(ISO), tensors.get(ROW_SCALES)
        weights = tensors.get(WEIGHTS)
        r = min(components, dim)
        if (
            rows.shape != (p, r, dim)
            or iso is None
            or iso.shape != (p,)
            or weights is None
            or weights.shape != (p, r)
        ):
            raise PadimError("model file tensors do not match each other (minor components)")
        if scales is not None and scales.shape != (p, r):
            raise PadimError("model file tensors do not match each other (row scales)")
        if scales is None and not rows.is_floating_point():
            raise PadimError("model file has int8 minor components without their scales")
        full_rows = rows.float() if scales is None else dequantise_rows(rows, scales)
        if bool((iso < 0).any()):
            raise PadimError("a minor component's isotropic precision is negative")
        return MinorGaussianModel(
            mean.float(),
            full_rows,
            weights.float(),
            iso.float(),
            scales=None if scales is None else scales.float(),
        )
    if TRIL in tensors:
        tril = tensors[TRIL]
        if tril.shape != (p, tril_size(dim)):
            raise PadimError("model file tensors do not match each other (whitening)")
        return GaussianModel.from_tril(mean, tril)
    full = tensors[FULL_V1]
    if full.shape != (p, dim, dim):
        raise PadimError("model file tensors do not match each other (whitening)")
    return GaussianModel.from_full(mean, full)
