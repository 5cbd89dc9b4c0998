"""Using a trained checkpoint on audio: amir-predict (recordings of any length) and amir-export."""
