// The web picker: a click (or tap) on #photo is a point, a drag is the box; coordinates go
// to the bot in the photo's own pixels (data-width x data-height), whatever size it shows at.
const photo = document.getElementById("photo");
const marks = document.getElementById("marks");
const status = document.getElementById("status");
const buttons = ["undo", "clear", "make"].map((id) => document.getElementById(id));
const [undoButton, clearButton, makeButton] = buttons;
const width = Number(photo.dataset.width);
const height = Number(photo.dataset.height);
const DRAG_PX = 8; // less movement than this on screen is a click, not a box
const MAX_POINTS = 10;

let points = [];
let box = null;
let steps = []; // "point" or "box", for Undo
let pressed = null; // where a press began, in screen and photo pixels
let dragging = null; // the box being drawn

function photoPixel(event) {
  const shown = photo.getBoundingClientRect();
  const x = ((event.clientX - shown.left) / shown.width) * width;
  const y = ((event.clientY - shown.top) / shown.height) * height;
  return [Math.min(width - 1, Math.max(0, Math.round(x))), Math.min(height - 1, Math.max(0, Math.round(y)))];
}

function boxOf(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]) + 1, Math.max(a[1], b[1]) + 1];
}

function draw() {
  const shown = photo.getBoundingClientRect();
  const ratio = window.devicePixelRatio || 1;
  marks.width = Math.round(shown.width * ratio);
  marks.height = Math.round(shown.height * ratio);
  const pen = marks.getContext("2d");
  pen.setTransform((shown.width * ratio) / width, 0, 0, (shown.height * ratio) / height, 0, 0);
  const unit = width / shown.width; // one screen pixel, in photo pixels
  const shownBox = dragging || box;
  if (shownBox) {
    pen.lineWidth = 3 * unit;
    pen.strokeStyle = "#ffc400";
    pen.strokeRect(shownBox[0], shownBox[1], shownBox[2] - shownBox[0], shownBox[3] - shownBox[1]);
  }
  pen.font = `${14 * unit}px system-ui, sans-serif`;
  points.forEach(([x, y], index) => {
    pen.beginPath();
    pen.arc(x, y, 7 * unit, 0, 2 * Math.PI);
    pen.fillStyle = "#2ecc71";
    pen.fill();
    pen.lineWidth = 2 * unit;
    pen.strokeStyle = "white";
    pen.stroke();
    pen.fillStyle = "white";
    pen.fillText(String(index + 1), x + 9 * unit, y - 6 * unit);
  });
  const said = [];
  if (points.length) said.push(`${points.length} point${points.length > 1 ? "s" : ""}`);
  if (box) said.push("a box");
  status.textContent = said.length ? `Chosen: ${said.join(" and ")}.` : "No points yet: the model then guesses.";
}

photo.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  photo.setPointerCapture(event.pointerId);
  pressed = { x: event.clientX, y: event.clientY, at: photoPixel(event) };
});

photo.addEventListener("pointermove", (event) => {
  if (!pressed) return;
  if (Math.hypot(event.clientX - pressed.x, event.clientY - pressed.y) >= DRAG_PX) {
    dragging = boxOf(pressed.at, photoPixel(event));
    draw();
  }
});

photo.addEventListener("pointerup", (event) => {
  if (!pressed) return;
  if (dragging) {
    box = boxOf(pressed.at, photoPixel(event));
    steps.push("box");
  } else if (points.length < MAX_POINTS) {
    points.push(pressed.at);
    steps.push("point");
  }
  pressed = null;
  dragging = null;
  draw();
});

photo.addEventListener("pointercancel", () => {
  pressed = null;
  dragging = null;
  draw();
});

undoButton.addEventListener("click", () => {
  const last = steps.pop();
  if (last === "point") points.pop();
  if (last === "box") box = null;
  draw();
});

clearButton.addEventListener("click", () => {
  points = [];
  box = null;
  steps = [];
  draw();
});

makeButton.addEventListener("click", async () => {
  buttons.forEach((button) => (button.disabled = true));
  status.textContent = "Starting...";
  try {
    const answer = await fetch(location.pathname, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ points, box }),
    });
    const said = await answer.json();
    status.textContent = said.message || said.error;
    if (answer.ok) {
      document.body.dataset.made = "true";
      return;
    }
  } catch (error) {
    status.textContent = "The bot could not be reached; try again.";
  }
  buttons.forEach((button) => (button.disabled = false));
});

window.addEventListener("resize", draw);
if (photo.complete) draw();
else photo.addEventListener("load", draw);
