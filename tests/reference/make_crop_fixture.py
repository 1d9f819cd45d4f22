#!/usr/bin/env python3
"""Write the fixtures of tests/crop.rs: the reference crop pipeline (SPEC §1.2, §1.3, §1.5).

Outputs (all under tests/fixtures/):
  crop_src.png               a deterministic synthetic 173x131 RGB image (smooth gradients,
                             sharp edges, seeded noise); stored as RGB (written via BGR for cv2)
  crop_cases.json            per case: center, box_size, rot, scale, flip, out_size and the 6
                             values of the forward 2x3 matrix (source -> crop), as cv2 gives them
  crop_expected.safetensors  per case `<name>`: the uint8 crop [out, out, 3] (HWC, RGB) from
                             cv2.warpAffine; `<name>.params`: f64 [cx, cy, box_size, rot, scale]
                             and `<name>.matrix`: f64 [6] (bit-exact copies of the JSON numbers,
                             since JSON float parsing need not round-trip exactly)

The affine is built exactly as HaMeR's `gen_trans_from_patch_cv` does (float32 source and
destination points, `cv2.getAffineTransform`), the crop as `generate_image_patch_cv2` does
(left hands: mirror the image and set cx <- W - cx - 1 first).

Requires numpy, safetensors and OpenCV 4.x (`pip install "opencv-python-headless<5"`):
OpenCV 5 replaced warpAffine's fixed-point bilinear path (1/32 px coordinates, 15-bit weights)
with a floating-point one, whose crops differ from 4.x's by up to several grey levels. The
reference (HaMeR / Hand-Uncertainty) ran on OpenCV 4.x, so the fixtures must come from 4.x.

Run from the repository root:  python3 tests/reference/make_crop_fixture.py
"""

import json
import os

import cv2
import numpy as np
from safetensors.numpy import save_file

assert cv2.__version__.startswith("4."), f"needs OpenCV 4.x, found {cv2.__version__}"

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")


# ---- the reference functions (HaMeR hamer/datasets/utils.py), restated --------------------

def expand_to_aspect_ratio(input_shape, target_aspect_ratio=None):
    if target_aspect_ratio is None:
        return input_shape
    w, h = input_shape
    w_t, h_t = target_aspect_ratio
    if h / w < h_t / w_t:
        h_new = max(w * h_t / w_t, h)
        w_new = w
    else:
        h_new = h
        w_new = max(h * w_t / h_t, w)
    return np.array([w_new, h_new])


def rotate_2d(pt_2d, rot_rad):
    x = pt_2d[0]
    y = pt_2d[1]
    sn, cs = np.sin(rot_rad), np.cos(rot_rad)
    xx = x * cs - y * sn
    yy = x * sn + y * cs
    return np.array([xx, yy], dtype=np.float32)


def gen_trans_from_patch_cv(c_x, c_y, src_width, src_height, dst_width, dst_height, scale, rot):
    src_w = src_width * scale
    src_h = src_height * scale
    src_center = np.zeros(2)
    src_center[0] = c_x
    src_center[1] = c_y
    rot_rad = np.pi * rot / 180
    src_downdir = rotate_2d(np.array([0, src_h * 0.5], dtype=np.float32), rot_rad)
    src_rightdir = rotate_2d(np.array([src_w * 0.5, 0], dtype=np.float32), rot_rad)

    dst_w = dst_width
    dst_h = dst_height
    dst_center = np.array([dst_w * 0.5, dst_h * 0.5], dtype=np.float32)
    dst_downdir = np.array([0, dst_h * 0.5], dtype=np.float32)
    dst_rightdir = np.array([dst_w * 0.5, 0], dtype=np.float32)

    src = np.zeros((3, 2), dtype=np.float32)
    src[0, :] = src_center
    src[1, :] = src_center + src_downdir
    src[2, :] = src_center + src_rightdir

    dst = np.zeros((3, 2), dtype=np.float32)
    dst[0, :] = dst_center
    dst[1, :] = dst_center + dst_downdir
    dst[2, :] = dst_center + dst_rightdir

    return cv2.getAffineTransform(np.float32(src), np.float32(dst))


def generate_image_patch_cv2(img, c_x, c_y, bb_width, bb_height, patch_width, patch_height,
                             do_flip, scale, rot):
    img_height, img_width, _ = img.shape
    if do_flip:
        img = img[:, ::-1, :]
        c_x = img_width - c_x - 1
    trans = gen_trans_from_patch_cv(c_x, c_y, bb_width, bb_height, patch_width, patch_height,
                                    scale, rot)
    patch = cv2.warpAffine(np.ascontiguousarray(img), trans, (int(patch_width), int(patch_height)),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
    return patch, trans


# ---- the synthetic source image ------------------------------------------------------------

def make_image(w=173, h=131, seed=20240917):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(xx / 13.0) * np.cos(yy / 17.0)
    g = 255.0 * xx / (w - 1)
    b = 255.0 * (0.5 + 0.5 * np.cos((xx + 2 * yy) / 23.0))
    img = np.stack([r, g, b], axis=-1)
    # sharp edges: a bright rectangle, a dark disc, a diagonal step, a one-pixel grid
    img[20:50, 30:80] = [250, 240, 10]
    disc = (xx - 120) ** 2 + (yy - 85) ** 2 < 22 ** 2
    img[disc] = [5, 20, 200]
    img[(xx - yy) > 110] *= 0.3
    img[::16, :] = [255, 255, 255]
    img[:, ::19] = [0, 0, 0]
    img += rng.normal(0.0, 12.0, img.shape)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    # the image's four corners get distinct saturated colours (border handling shows up there)
    img[0, 0] = [255, 0, 0]
    img[0, -1] = [0, 255, 0]
    img[-1, 0] = [0, 0, 255]
    img[-1, -1] = [255, 255, 255]
    return img


# ---- cases -----------------------------------------------------------------------------------

# name, center, box side (px) or scale_px (w, h) for the eval rule, rot (deg), scale, flip, out
CASES = [
    ("centred", (86.0, 65.0), 100.0, 0.0, 1.0, False, 256),
    ("partly_outside", (20.25, 118.5), 120.0, 0.0, 1.0, False, 256),
    ("tiny_upsample", (90.3, 60.7), 17.5, 0.0, 1.0, False, 256),
    ("large_downsample", (86.5, 65.5), (300.0, 210.0), 0.0, 1.0, False, 256),
    ("rot_p30", (80.37, 70.81), (70.0, 88.0), 30.0, 1.0, False, 256),
    ("rot_m45", (101.6, 49.2), 110.0, -45.0, 1.0, False, 256),
    ("scale_1p3", (70.1, 59.9), 80.0, 0.0, 1.3, False, 256),
    ("left_flip", (50.6, 64.2), (72.3, 61.9), 0.0, 1.0, True, 256),
    ("flip_rot_out128", (123.45, 33.3), 130.0, 12.5, 0.85, True, 128),
]


def main():
    os.makedirs(FIX, exist_ok=True)
    img = make_image()
    ok = cv2.imwrite(os.path.join(FIX, "crop_src.png"), img[:, :, ::-1])
    assert ok
    back = cv2.imread(os.path.join(FIX, "crop_src.png"))[:, :, ::-1]
    assert np.array_equal(back, img)

    tensors = {}
    cases = []
    for name, center, box, rot, scale, flip, out in CASES:
        case = {"name": name}
        if isinstance(box, tuple):
            case["scale_px"] = list(box)
            box = float(expand_to_aspect_ratio(np.array(box), [192, 256]).max())
        patch, trans = generate_image_patch_cv2(img, center[0], center[1], box, box, out, out,
                                                flip, scale, rot)
        assert patch.shape == (out, out, 3) and patch.dtype == np.uint8
        m = [float(v) for v in trans.reshape(-1)]
        case.update(center=list(center), box_size=box, rot=rot, scale=scale, flip=flip,
                    out_size=out, matrix=m)
        cases.append(case)
        tensors[name] = np.ascontiguousarray(patch)
        tensors[name + ".params"] = np.array([center[0], center[1], box, rot, scale], np.float64)
        tensors[name + ".matrix"] = np.array(m, np.float64)
        print(f"{name:18s} box {box:8.3f} nonzero {np.count_nonzero(patch.any(-1)):6d} px")

    with open(os.path.join(FIX, "crop_cases.json"), "w") as f:
        json.dump({"image": "crop_src.png", "opencv": cv2.__version__, "cases": cases}, f,
                  indent=1)
        f.write("\n")
    save_file(tensors, os.path.join(FIX, "crop_expected.safetensors"))


if __name__ == "__main__":
    main()
