//! Exact properties of the MANO layer and the 6D rotation on the fixture's MANO-shaped model
//! (778 vertices, 1538 faces, 16 joints).

mod common;

use common::fixture;
use handcov::model::mano::Mano;
use handcov::model::weights::TensorFile;
use handcov::ops::geometry::rot6d_to_rotmat;
use handcov::tensor::Tensor;

fn identity_rotmats(b: usize) -> Tensor {
    let mut r = vec![0f32; b * 16 * 9];
    for m in r.chunks_mut(9) {
        m[0] = 1.0;
        m[4] = 1.0;
        m[8] = 1.0;
    }
    Tensor::from_vec(&[b, 16, 3, 3], r).unwrap()
}

#[test]
fn identity_pose_and_zero_betas_give_the_template_exactly() {
    let f = TensorFile::open(&fixture("tiny_weights.safetensors")).unwrap();
    let mano = Mano::load(&f).unwrap();
    assert_eq!((mano.num_verts(), mano.faces.len()), (778, 1538));
    let (verts, kp) = mano
        .forward(&identity_rotmats(2), &Tensor::zeros(&[2, 10]))
        .unwrap();
    let vt = mano.v_template.data();
    for b in 0..2 {
        assert_eq!(
            &verts.data()[b * 778 * 3..(b + 1) * 778 * 3],
            vt,
            "sample {b}: vertices differ from v_template"
        );
    }
    // The fingertip keypoints are template vertices, in OpenPose order (tips last per finger).
    let tips_in_openpose = [(4, 744), (8, 320), (12, 443), (16, 554), (20, 671)];
    for (k, v) in tips_in_openpose {
        assert_eq!(
            &kp.data()[k * 3..k * 3 + 3],
            &vt[v * 3..v * 3 + 3],
            "keypoint {k}"
        );
    }
}

#[test]
fn identity_6d_code_is_the_identity_rotation() {
    assert_eq!(
        rot6d_to_rotmat(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    );
}
