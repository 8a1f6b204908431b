//! The desktop app (eframe/egui). It never touches candle: it sees the model only through the
//! worker's events.

pub mod app;
pub mod autosave;
pub mod export;
pub mod heatmap;
mod raster;
pub mod session;
pub mod state;
pub mod svg;
pub mod views;

use std::path::PathBuf;

pub use app::DendriteApp;

/// Opens the window on `model` (or on nothing: the top bar then says how to open one), with
/// `saes` attached and `stores` opened once it has loaded and `prompt` (when given) as the
/// first prompt; or on a saved `session`. The session is written to a recovery file as it
/// changes (see [`autosave`]), and work a crashed window left behind is offered back.
pub fn run_app(
    model: Option<PathBuf>,
    saes: Vec<PathBuf>,
    stores: Vec<PathBuf>,
    prompt: Option<String>,
    session: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("Dendrite")
        .with_app_id("dendrite")
        .with_inner_size([1400.0, 860.0])
        .with_drag_and_drop(true);
    // The icon is compiled in (assets/icon.png); a window without it still opens.
    if let Ok(icon) = eframe::icon_data::from_png_bytes(include_bytes!("../../assets/icon.png")) {
        viewport = viewport.with_icon(icon);
    }
    let options = eframe::NativeOptions {
        viewport,
        ..Default::default()
    };
    eframe::run_native(
        "Dendrite",
        options,
        Box::new(move |cc| {
            let model = if session.is_some() { None } else { model };
            let mut app = DendriteApp::new(&cc.egui_ctx, cc.storage, model)?;
            app.attach_on_load = saes;
            app.stores_on_load = stores;
            if let Some(p) = prompt {
                app.state.prompt = p;
            }
            match autosave::default_dir() {
                Some(dir) => {
                    if let Err(e) = app.enable_recovery(&dir) {
                        app.state.notice = Some(format!("No crash recovery: {e:#}"));
                    }
                }
                None => {
                    app.state.notice =
                        Some("No crash recovery: no folder for app data (set HOME)".into())
                }
            }
            if let Some(path) = &session {
                app.open_session(path);
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("the window failed: {e}"))
}
