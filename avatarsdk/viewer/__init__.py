"""An interactive three.js viewer for a .glb, served on 127.0.0.1 (``avatarsdk view``).

The page (``static/index.html``, ``static/viewer.js``) loads the file with three.js's
GLTFLoader and shows it with orbit controls, a simple light and one slider per
morph target (the names stored in the file). three.js itself is shipped in
``static/three/`` (MIT, its LICENSE beside it), copied from the version pinned in
``package.json`` by ``make viewer-static``, so the viewer needs no CDN and no node.

    from avatarsdk.viewer import ViewerServer
    with ViewerServer("head.glb") as server:
        print(server.url)
        server.serve_forever()
"""

from avatarsdk.viewer.server import GLB_ROUTE, STATIC_DIR, ViewerServer, static_routes

__all__ = ["GLB_ROUTE", "STATIC_DIR", "ViewerServer", "static_routes"]
