"""dpp server: the master (plans sessions, assigns splits) and workers (read, transform, stream).

Run them with the ``dpp`` command (``dpp master``, ``dpp worker``, ``dpp up``). Library code
here imports no torch; ``master.py`` and ``worker.py`` import no grpc.
"""
