"""The audio front end: decode, mono, resample, clips, RMS gate, mel; ``FeatureParams``; and the one
worker pipeline (files -> clips -> mels) that amir-prepare and amir-predict run."""
