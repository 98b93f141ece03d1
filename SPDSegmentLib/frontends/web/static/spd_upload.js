// Upload chosen files to this session ("upload" is relative to the page: /s/<token>/upload).
// Checks the size limit before sending; resolves to {ok, message} for the page's message bar.
window.spdUpload = async function spdUpload(fileList, maxBytes) {
  const files = Array.from(fileList || []);
  if (files.length === 0) {
    return { ok: false, message: "no file chosen" };
  }
  const total = files.reduce((sum, f) => sum + f.size, 0);
  if (maxBytes && total > maxBytes) {
    const mb = (n) => (n / 1048576).toFixed(1);
    return {
      ok: false,
      message: `upload refused: ${mb(total)} MB is more than the limit of ${mb(maxBytes)} MB`,
    };
  }
  const form = new FormData();
  for (const f of files) {
    form.append("file", f, f.name);
  }
  try {
    const response = await fetch("upload", { method: "POST", body: form });
    try {
      return await response.json();
    } catch (error) {
      return { ok: false, message: `upload failed: HTTP ${response.status}` };
    }
  } catch (error) {
    return { ok: false, message: `upload failed: ${error}` };
  }
};
