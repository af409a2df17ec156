# Print what Godot 3 built from imported scenes, one JSON line per scene.
#
# Run from a project whose assets the editor has imported:
#   PROBE_SCENES="res://a.glb;res://b.glb" godot3 --no-window --path PROJECT -s res://godot_probe.gd
# Each line is "PROBE_JSON " + {scene, nodes, skeletons, meshes}; tests/test_engines.py reads them.
# Blend shapes are read back from the mesh (Godot keeps them as whole vertex arrays), so a target
# that the importer lost shows up as a zero displacement here.
extends SceneTree


func _init():
	for path in OS.get_environment("PROBE_SCENES").split(";", false):
		var packed = load(path)
		if packed == null:
			print("PROBE_JSON " + JSON.print({"scene": path, "error": "cannot load"}))
			continue
		var root = packed.instance()
		var out = {"scene": path, "nodes": [], "skeletons": [], "meshes": []}
		_walk(root, root, out)
		print("PROBE_JSON " + JSON.print(out))
		root.free()
	quit()


func _walk(node, root, out):
	var path = str(root.get_path_to(node))
	out["nodes"].append({"path": path, "class": node.get_class()})
	if node is Skeleton:
		var bones = []
		for b in range(node.get_bone_count()):
			bones.append({"name": node.get_bone_name(b), "parent": node.get_bone_parent(b)})
		out["skeletons"].append({"path": path, "bones": bones})
	if node is MeshInstance and node.mesh != null:
		out["meshes"].append(_mesh(node, path))
	for child in node.get_children():
		_walk(child, root, out)


func _mesh(mi, path):
	var m = mi.mesh
	var names = []
	for k in range(m.get_blend_shape_count()):
		names.append(str(m.get_blend_shape_name(k)))
	var surfaces = []
	for s in range(m.get_surface_count()):
		var arrays = m.surface_get_arrays(s)
		var base = arrays[Mesh.ARRAY_VERTEX]
		var index = arrays[Mesh.ARRAY_INDEX]
		var blend = m.surface_get_blend_shape_arrays(s)
		# Largest |component| of (target - base) over the surface's vertices, per blend shape
		# (-1: the target's vertex array does not match the surface's).
		var max_delta = []
		for k in range(blend.size()):
			var verts = blend[k][Mesh.ARRAY_VERTEX]
			var mx = -1.0
			if verts.size() == base.size():
				mx = 0.0
				for i in range(base.size()):
					var d = verts[i] - base[i]
					mx = max(mx, max(abs(d.x), max(abs(d.y), abs(d.z))))
			max_delta.append(mx)
		var mat = mi.get_surface_material(s)
		if mat == null:
			mat = m.surface_get_material(s)
		var mat_info = null
		if mat != null:
			mat_info = {"name": mat.resource_name, "class": mat.get_class()}
			if mat is SpatialMaterial:
				var tex = mat.albedo_texture
				mat_info["albedo_texture"] = null if tex == null else [tex.get_width(), tex.get_height()]
				mat_info["albedo"] = [mat.albedo_color.r, mat.albedo_color.g, mat.albedo_color.b, mat.albedo_color.a]
				mat_info["transparent"] = mat.flags_transparent
				mat_info["cull_disabled"] = mat.params_cull_mode == SpatialMaterial.CULL_DISABLED
				mat_info["roughness"] = mat.roughness
		var bones = arrays[Mesh.ARRAY_BONES]
		surfaces.append({
			"vertices": base.size(),
			"triangles": index.size() / 3 if index != null else base.size() / 3,
			"has_bones": bones != null and bones.size() > 0,
			"blend_max_delta": max_delta,
			"material": mat_info,
		})
	var binds = []
	if mi.skin != null:
		for b in range(mi.skin.get_bind_count()):
			binds.append(str(mi.skin.get_bind_name(b)))
	return {"path": path, "name": mi.name, "mesh_name": m.resource_name, "blend_shape_names": names,
		"skeleton": str(mi.skeleton), "skin_binds": binds, "surfaces": surfaces}
