"""Running the federation: what `fl-app fl ...` and `fl-app evaluate` start.

A component (``fl_app/components.py`` lists it) that lives in the program
layer, ``fl_app``, because it knows both apps (``server.server_app:app`` and
``clients.client_app:app``), which may not import each other. It hands them
the same settings, derived from the Hydra config
(:class:`core.messages.RunSettings`), so Hydra stays the one source of truth.

- :mod:`.settings`: the devices that get a client, and the run settings both apps read;
- :mod:`.simulation`: the apps on Flower's simulation runtime (``fl.runtime=simulation``);
- :mod:`.deployment`: a SuperLink with one SuperNode per device, the run submitted to it, kept alive;
- :mod:`.security`: TLS and SuperNode-authentication flags and the certificates they need;
- :mod:`.evaluate`: the learning-quality experiment (`fl-app evaluate`);
- :mod:`.component` and :mod:`.cli`: how `fl-app run` starts it, and its commands.
"""
