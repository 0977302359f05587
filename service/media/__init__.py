"""The media path: images and audio loaded within limits, run through the processor, one family file each."""
