"""Pretext (self-supervised) tasks that train the encoder (front-end + ResNet trunk) without
labels: LiRA (predict the clip's audio features from the face), Video-BYOL and DINO. Each
module holds its network wrapper and its loss as importable functions; the training loop
(training.loop) runs them, and `pipeline.model.encoder_weights.encoder_checkpoint` writes what
`finetune` loads."""
