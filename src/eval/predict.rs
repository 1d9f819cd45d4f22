//! `eval predict`: runs a model over an evaluation set and writes the reference's result files.
//! (Being written.)
