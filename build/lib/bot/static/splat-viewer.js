// The splat view of /m/<id>: Spark draws the Gaussian splat with three.js; drag to turn it,
// scroll to zoom. SAM 3D's splats are Z-up: turned to three.js's Y-up here.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";

const canvas = document.getElementById("splat");
const renderer = new THREE.WebGLRenderer({ canvas, antialias: false });
renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
const scene = new THREE.Scene();
scene.background = new THREE.Color(0xe9e9ec);
const camera = new THREE.PerspectiveCamera(45, 1, 0.01, 1000);
scene.add(new SparkRenderer({ renderer }));  // Spark draws the scene's splats
const controls = new OrbitControls(camera, canvas);
controls.enableDamping = true;
controls.autoRotate = true;

function fit() {
  const { clientWidth: width, clientHeight: height } = canvas;
  renderer.setSize(width, height, false);
  camera.aspect = width / height;
  camera.updateProjectionMatrix();
}
window.addEventListener("resize", fit);
fit();

const splat = new SplatMesh({ url: canvas.dataset.src });
splat.rotation.x = -Math.PI / 2;
scene.add(splat);
await splat.initialized;

// Frame the object: centre it and step back until it fills most of the view.
const box = splat.getBoundingBox ? splat.getBoundingBox(true) : new THREE.Box3(
  new THREE.Vector3(-0.5, -0.5, -0.5), new THREE.Vector3(0.5, 0.5, 0.5));
box.applyMatrix4(splat.matrixWorld);
const centre = box.getCenter(new THREE.Vector3());
const size = box.getSize(new THREE.Vector3()).length();
controls.target.copy(centre);
camera.position.copy(centre).add(new THREE.Vector3(0.6, 0.35, 1).normalize()
  .multiplyScalar(size * 1.1));
camera.near = size / 100;
camera.far = size * 100;
camera.updateProjectionMatrix();

renderer.setAnimationLoop(() => {
  controls.update();
  renderer.render(scene, camera);
});
document.body.dataset.loaded = "true";
