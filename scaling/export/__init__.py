"""Trained stages in other toolkits' layouts: a CLIP stage as an open_clip model folder
(``python -m scaling.export``), and CLIP_benchmark's results on it logged back to the stage's run."""
