// avatarsdk viewer: one .glb with orbit controls and a slider per morph target.
//
// The page is served by `avatarsdk view` (avatarsdk/viewer/server.py) from 127.0.0.1; three.js
// is the copy shipped in this package. Tests drive it through `window.viewer` and the sliders.

import * as THREE from 'three';
import { GLTFLoader } from 'three/addons/loaders/GLTFLoader.js';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';

const FOV_Y = 18; // degrees, as the software preview (avatarsdk/preview.py)
const view = document.getElementById('view');
const status = document.getElementById('status');

const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(window.devicePixelRatio);
view.appendChild(renderer.domElement);

const scene = new THREE.Scene();
scene.background = new THREE.Color(0x54565a);
const camera = new THREE.PerspectiveCamera(FOV_Y, 1, 0.01, 100);
scene.add(camera);
// A simple light: sky/ground fill plus a key light that moves with the camera (upper front left).
scene.add(new THREE.HemisphereLight(0xffffff, 0x3a3a3a, 1.6));
const key = new THREE.DirectionalLight(0xffffff, 1.8);
key.position.set(-0.35, 0.45, 1.0);
camera.add(key);

const controls = new OrbitControls(camera, renderer.domElement);
controls.enableDamping = false;
controls.addEventListener('change', render);

const meshes = []; // every mesh with morph targets
const sliders = new Map(); // name -> <input type=range>

function render() {
  renderer.render(scene, camera);
}

function resize() {
  const w = Math.max(1, view.clientWidth), h = Math.max(1, view.clientHeight);
  renderer.setSize(w, h, false);
  camera.aspect = w / h;
  camera.updateProjectionMatrix();
  render();
}
window.addEventListener('resize', resize);

function setMorph(name, weight) {
  const w = Math.min(1, Math.max(0, Number(weight)));
  let found = false;
  for (const m of meshes) {
    const i = m.morphTargetDictionary[name];
    if (i !== undefined) {
      m.morphTargetInfluences[i] = w;
      found = true;
    }
  }
  if (!found) throw new Error(`unknown morph target ${name}`);
  const s = sliders.get(name);
  if (s) {
    s.value = String(w);
    s.nextElementSibling.value = w.toFixed(2);
  }
  render();
}

function morphNames() {
  if (!meshes.length) return [];
  const d = meshes[0].morphTargetDictionary;
  return Object.keys(d).sort((a, b) => d[a] - d[b]);
}

function buildSliders(names) {
  const box = document.getElementById('morphs');
  for (const name of names) {
    const label = document.createElement('label');
    const span = document.createElement('span');
    span.textContent = span.title = name;
    const input = Object.assign(document.createElement('input'),
      { type: 'range', min: '0', max: '1', step: '0.01', value: '0' });
    input.dataset.morph = name;
    const out = document.createElement('output');
    out.value = '0.00';
    input.addEventListener('input', () => setMorph(name, input.valueAsNumber));
    label.append(span, input, out);
    box.appendChild(label);
    sliders.set(name, input);
  }
  document.getElementById('reset').addEventListener('click', () => names.forEach((n) => setMorph(n, 0)));
}

function frame(object) {
  // Front view (+z) of the whole model, framed as the software preview frames it.
  const box = new THREE.Box3().setFromObject(object);
  const centre = box.getCenter(new THREE.Vector3());
  const radius = box.getSize(new THREE.Vector3()).length() / 2;
  const dist = (radius / Math.sin(THREE.MathUtils.degToRad(FOV_Y) / 2)) * 0.92;
  camera.near = dist * 0.05;
  camera.far = dist * 4;
  camera.position.set(centre.x, centre.y, centre.z + dist);
  controls.target.copy(centre);
  controls.update();
}

function fileName(res) {
  const m = /filename="([^"]+)"/.exec(res.headers.get('Content-Disposition') || '');
  return m ? decodeURIComponent(m[1]) : 'model.glb';
}

async function load() {
  const res = await fetch('/model.glb');
  if (!res.ok) throw new Error(`GET /model.glb: HTTP ${res.status}`);
  const name = fileName(res);
  const gltf = await new GLTFLoader().parseAsync(await res.arrayBuffer(), '');
  gltf.scene.traverse((o) => {
    if (o.isMesh && o.morphTargetDictionary && o.morphTargetInfluences) meshes.push(o);
  });
  scene.add(gltf.scene);
  const names = morphNames();
  buildSliders(names);
  frame(gltf.scene);
  resize();
  document.title = `${name} - avatarsdk viewer`;
  document.getElementById('title').textContent = name;
  status.textContent = `${names.length} morph targets, ${meshes.length} morphed meshes`;
  document.body.dataset.state = 'ready';
  return names;
}

const ready = load().catch((e) => {
  document.body.dataset.state = 'error';
  status.textContent = `could not load the model: ${e.message}`;
  console.error(e);
  throw e;
});

window.viewer = { ready, setMorph, morphNames, render };
