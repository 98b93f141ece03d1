"""Front ends over the engine: the command line (``cli``, ``demo``), the MRML logic shared by the
3D Slicer module and the browser app (``mrml_logic``), and the browser app (``web``)."""
