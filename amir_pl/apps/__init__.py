"""One thin ``main`` per console script: compose the config, call the library, print. No app imports another."""
