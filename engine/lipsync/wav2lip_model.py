"""The Wav2Lip generator (Prajwal et al., 2020) re-implemented so the official checkpoints load.

Module names and nesting follow the published checkpoint layout exactly (352 state-dict entries,
36.3 M parameters); that layout is the contract, which is why the attribute names look dated.
The weights themselves are not redistributable, so the engine never ships or downloads them.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingWeights

CHECKPOINT_HINT = (
    "Wav2Lip checkpoints are not redistributable (research/non-commercial licence), so the engine does "
    "not ship or download them. Obtain wav2lip.pth or wav2lip_gan.pth yourself and set "
    "ENGINE_WAV2LIP_CHECKPOINT to its path."
)
FIELD = "wav2lip_checkpoint"


class InvalidCheckpoint(MissingWeights):
    """The configured file exists but is not a Wav2Lip generator checkpoint."""

    code = "invalid_weights"


class Conv2d(nn.Module):
    """Conv + BatchNorm (+ identity when ``residual``) + ReLU; the unit every stage is built from."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int | tuple[int, int], padding: int,
                 residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding),
                                        nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class Conv2dTranspose(nn.Module):
    """Transposed conv + BatchNorm + ReLU: one upsampling step of the face decoder."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, padding: int,
                 output_padding: int = 0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _res(channels: int, n: int) -> list[nn.Module]:
    return [Conv2d(channels, channels, 3, 1, 1, residual=True) for _ in range(n)]


def _up(cin: int, cout: int, n_res: int) -> nn.Sequential:
    return nn.Sequential(Conv2dTranspose(cin, cout, 3, 2, 1, output_padding=1), *_res(cout, n_res))


class Wav2Lip(nn.Module):
    """Generator: (mel 1×80×16, face 6×96×96 = masked target ⊕ reference, BGR 0..1) → face 3×96×96.

    Every face-encoder feature map is concatenated onto the decoder stage of the same size
    (a U-Net), which is what lets the upper face pass through almost untouched.
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(Conv2d(6, 16, 7, 1, 3)),  # 96
            nn.Sequential(Conv2d(16, 32, 3, 2, 1), *_res(32, 2)),  # 48
            nn.Sequential(Conv2d(32, 64, 3, 2, 1), *_res(64, 3)),  # 24
            nn.Sequential(Conv2d(64, 128, 3, 2, 1), *_res(128, 2)),  # 12
            nn.Sequential(Conv2d(128, 256, 3, 2, 1), *_res(256, 2)),  # 6
            nn.Sequential(Conv2d(256, 512, 3, 2, 1), *_res(512, 1)),  # 3
            nn.Sequential(Conv2d(512, 512, 3, 1, 0), Conv2d(512, 512, 1, 1, 0)),  # 1
        ])
        self.audio_encoder = nn.Sequential(
            Conv2d(1, 32, 3, 1, 1), *_res(32, 2),  # 80×16
            Conv2d(32, 64, 3, (3, 1), 1), *_res(64, 2),  # 27×16
            Conv2d(64, 128, 3, 3, 1), *_res(128, 2),  # 9×6
            Conv2d(128, 256, 3, (3, 2), 1), *_res(256, 1),  # 3×3
            Conv2d(256, 512, 3, 1, 0), Conv2d(512, 512, 1, 1, 0),  # 1×1
        )
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(Conv2d(512, 512, 1, 1, 0)),  # 1
            nn.Sequential(Conv2dTranspose(1024, 512, 3, 1, 0), *_res(512, 1)),  # 3
            _up(1024, 512, 2),  # 6
            _up(768, 384, 2),  # 12
            _up(512, 256, 2),  # 24
            _up(320, 128, 2),  # 48
            _up(160, 64, 2),  # 96
        ])
        self.output_block = nn.Sequential(Conv2d(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, audio: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """``audio`` (B,1,80,16), ``face`` (B,6,96,96) → (B,3,96,96) in 0..1."""
        skips = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(audio)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        return self.output_block(x)


def _describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Human-readable summary of key/shape differences, or None when the checkpoint fits."""
    expected = model.state_dict()
    # BatchNorm fills in a missing ``num_batches_tracked`` itself (very old checkpoints lack it).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
             for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return None
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" … and {len(items) - 5} more" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    if any(k.startswith("binary_pred") for k in state):
        parts.append("this looks like the visual-quality discriminator (visual_quality_disc.pth)")
    elif any(k.startswith("face_encoder.") for k in state):
        parts.append("this looks like the SyncNet expert (lipsync_expert.pth), not the generator")
    return "; ".join(parts)


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> Wav2Lip:
    """Load ``wav2lip.pth`` / ``wav2lip_gan.pth`` (or a bare state dict) into an eval-mode generator.

    The file is read to the CPU first: official checkpoints also carry ~290 MB of Adam state that
    must not land on the GPU.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeights(f"Wav2Lip checkpoint not found at {path}. {CHECKPOINT_HINT}", field=FIELD)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        # torch's own message suggests weights_only=False, which would let the file run code: not shown.
        raise InvalidCheckpoint(f"{path.name} could not be read as a PyTorch checkpoint of plain tensors "
                                f"({type(err).__name__}); it is damaged or not a Wav2Lip checkpoint. "
                                f"{CHECKPOINT_HINT}", field=FIELD) from err
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidCheckpoint(f"{path.name} holds no state dict of tensors. {CHECKPOINT_HINT}", field=FIELD)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = Wav2Lip()
    problem = _describe_mismatch(model, state)
    if problem:
        raise InvalidCheckpoint(f"{path.name} is not a Wav2Lip generator checkpoint: {problem}. "
                                f"{CHECKPOINT_HINT}", field=FIELD)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
