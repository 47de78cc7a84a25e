"""Checks the .pth files retrain-inception writes with PyTorch itself (run by scripts/check-pth.sh).
Exits non-zero on the first mismatch.

- torch.load(weights_only=True) reads the file, with and without mmap=True (which reads each
  storage in place, at its record's offset), into an OrderedDict of contiguous CPU tensors without
  gradients: float32 parameters and statistics, int64 0-d num_batches_tracked;
- torchvision's inception_v3(weights=None, aux_logits=True, init_weights=False) accepts it with
  load_state_dict(strict=True), for 1000 and for 10 classes;
- every tensor equals the one in the safetensors file that retrain-inception converted from the
  .pth (our reader, checked here against torch's);
- the archive is what torch.save writes: saving the loaded dict again with torch.save gives the same
  data.pkl byte for byte and the same data/<key>, byteorder and version records (torch 2.x adds
  .format_version, .storage_alignment and .data/serialization_id, which we leave out); entries are
  stored, with correct CRCs, and each one's data starts at a multiple of 64 bytes.

usage: check_pth.py WORKDIR   (WORKDIR holds seeded.pth, seeded.safetensors, seeded10.pth)
"""

import collections
import struct
import sys
import zipfile
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file

# Records torch 2.x writes that the Rust writer leaves out on purpose.
TORCH_ONLY = {".format_version", ".storage_alignment", ".data/serialization_id"}


def fail(msg):
    sys.exit(f"check_pth: {msg}")


def expect(cond, msg):
    if not cond:
        fail(msg)


def check_state_dict(path: Path, num_classes: int) -> dict:
    sd = torch.load(path, weights_only=True)
    expect(type(sd) is collections.OrderedDict, f"{path}: {type(sd).__name__}, not an OrderedDict")
    for name, t in sd.items():
        expect(t.device.type == "cpu" and t.is_contiguous(), f"{path}: {name} not contiguous on cpu")
        expect(not t.requires_grad, f"{path}: {name} requires grad")
        if name.endswith("num_batches_tracked"):
            expect(t.dtype == torch.int64 and t.dim() == 0, f"{path}: {name} is {t.dtype} {t.shape}")
        else:
            expect(t.dtype == torch.float32, f"{path}: {name} is {t.dtype}")
    model = torchvision.models.inception_v3(
        weights=None, aux_logits=True, init_weights=False, num_classes=num_classes
    )
    model.load_state_dict(sd, strict=True)
    expect(len(sd) == len(model.state_dict()), f"{path}: {len(sd)} tensors")
    mapped = torch.load(path, weights_only=True, mmap=True)
    expect(list(mapped) == list(sd), f"{path}: mmap=True gives other names")
    for name, t in sd.items():
        expect(torch.equal(mapped[name], t), f"{path}: {name} differs with mmap=True")
    print(f"{path.name}: torch.load and strict load_state_dict: {len(sd)} tensors, {num_classes} classes")
    return sd


def local_data_offset(raw: bytes, info: zipfile.ZipInfo) -> int:
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len


def check_archive(ours: Path, theirs: Path) -> None:
    raw = ours.read_bytes()
    with zipfile.ZipFile(ours) as zo, zipfile.ZipFile(theirs) as zt:
        expect(zo.testzip() is None, f"{ours}: a CRC does not match")
        prefix = ours.stem + "/"
        names = [i.filename for i in zo.infolist()]
        expect(all(n.startswith(prefix) for n in names), f"{ours}: records outside {prefix}")
        expect(names[0] == prefix + "data.pkl", f"{ours}: first record {names[0]}")
        for info in zo.infolist():
            expect(info.compress_type == zipfile.ZIP_STORED, f"{info.filename} is compressed")
            offset = local_data_offset(raw, info)
            expect(offset % 64 == 0, f"{info.filename}: data at {offset}, not 64-byte aligned")
        ours_records = {n.removeprefix(prefix) for n in names}
        theirs_prefix = theirs.stem + "/"
        theirs_records = {i.filename.removeprefix(theirs_prefix) for i in zt.infolist()}
        expect(
            theirs_records - ours_records <= TORCH_ONLY and ours_records <= theirs_records,
            f"records differ: ours only {sorted(ours_records - theirs_records)}, "
            f"torch only {sorted(theirs_records - ours_records)}",
        )
        for record in sorted(ours_records):
            a = zo.read(prefix + record)
            b = zt.read(theirs_prefix + record)
            expect(a == b, f"{record}: {len(a)} bytes differ from torch.save's {len(b)}")
    print(f"{ours.name}: data.pkl and all {len(ours_records)} records equal torch.save's bytes")


def main(work: Path) -> None:
    torch.set_num_threads(2)
    sd = check_state_dict(work / "seeded.pth", 1000)
    check_state_dict(work / "seeded10.pth", 10)

    st = load_file(work / "seeded.safetensors")
    expect(set(st) == set(sd), f"safetensors names differ: {sorted(set(st) ^ set(sd))[:5]}")
    for name, t in sd.items():
        expect(st[name].dtype == t.dtype and torch.equal(st[name], t), f"{name} differs")
    w = sd["Conv2d_1a_3x3.conv.weight"]
    expect(0.05 < w.std().item() < 0.2, f"Conv2d_1a_3x3.conv.weight std {w.std().item()}")
    expect(torch.equal(sd["Mixed_7c.branch_pool.bn.running_var"], torch.ones(192)), "running_var")
    print(f"seeded.pth: all {len(sd)} tensors equal retrain-inception's safetensors conversion")

    resaved = work / "torch" / "seeded.pth"
    resaved.parent.mkdir(exist_ok=True)
    torch.save(sd, resaved)
    check_archive(work / "seeded.pth", resaved)
    print("check_pth: ok")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
