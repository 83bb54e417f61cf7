"""What is done to any learner's predictions at inference: edge-aware upsampling,
test-time refinement (self-support prototypes, transductive inference), how shots combine,
and a presence score. The options (fewseg.refinement.options) are torch-free; the rest
lives in fewseg.refinement.pipeline and the modules it uses."""
