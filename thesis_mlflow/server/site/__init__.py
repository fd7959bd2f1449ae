"""Start-up code of the ``mlflow server`` processes we launch (see ``sitecustomize.py``).

``server.start`` puts this folder first on the server's PYTHONPATH, so every process of the
server (the ``mlflow server`` command and each uvicorn worker it spawns) runs it.
"""
