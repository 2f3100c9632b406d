"""Long recordings and long clips into training windows: finding recordings and their transcripts,
aligning text to speech, cutting 30 s windows at pauses, splits by recording."""
