//! Sessions: the *Session* menu (open, save, the last session) and the questions a session
//! asks before it is restored (a model file that moved, work a crashed window left behind).

use egui::Ui;

use crate::ui::session::{EXTENSION, SessionFile, SessionPrompt};
use crate::ui::state::{Action, AppState};

/// The *Session* menu's entries.
pub fn session_menu_ui(ui: &mut Ui, state: &AppState) -> Option<Action> {
    let mut action = None;
    ui.menu_button("Session", |ui| {
        if ui
            .button("Open session…")
            .on_hover_text("A .dendrite file: model, SAEs, stores, prompt, interventions, view")
            .clicked()
        {
            ui.close();
            action = pick_session().map(Action::OpenSession);
        }
        let save = ui.add_enabled(state.model.is_some(), egui::Button::new("Save session…"));
        if save
            .on_hover_text("Everything needed to reopen this picture, as a .dendrite file")
            .clicked()
        {
            ui.close();
            action = save_session_as(state).map(Action::SaveSession);
        }
        if let Some(last) =
            crate::ui::autosave::default_dir().map(|d| d.join(crate::ui::autosave::LAST_SESSION))
            && ui
                .button("Open last session")
                .on_hover_text(format!(
                    "The session as the window last closed ({})",
                    last.display()
                ))
                .clicked()
        {
            ui.close();
            action = Some(Action::OpenSession(last));
        }
    });
    action
}

/// The question the state holds, as a modal dialog.
pub fn session_prompt_ui(ctx: &egui::Context, state: &AppState) -> Option<Action> {
    let prompt = state.session_prompt.as_ref()?;
    let mut action = None;
    egui::Modal::new(egui::Id::unique("session_prompt")).show(ctx, |ui| {
        ui.set_max_width(520.0);
        match prompt {
            SessionPrompt::Recover { session, age, .. } => {
                ui.heading("Restore the unsaved session?");
                ui.label(format!(
                    "Dendrite did not close cleanly last time. Its session was saved {age}:"
                ));
                summary_ui(ui, session);
                ui.horizontal(|ui| {
                    if ui.button("Restore").clicked() {
                        action = Some(Action::RestoreRecovery);
                    }
                    if ui
                        .button("Not now")
                        .on_hover_text(
                            "Keeps it as previous.dendrite in the recovery folder \
                             (Session → Open session… restores it later)",
                        )
                        .clicked()
                    {
                        action = Some(Action::DismissSessionPrompt);
                    }
                });
            }
            SessionPrompt::ModelMissing { session, missing } => {
                ui.heading("Where is the session's model?");
                ui.label(format!(
                    "{} is not there any more. Locate the model file (or folder) to open the \
                     session with it:",
                    missing.display()
                ));
                summary_ui(ui, session);
                ui.horizontal(|ui| {
                    if ui.button("Locate model…").clicked()
                        && let Some(path) = super::top_bar::pick_model()
                    {
                        action = Some(Action::LocateModel(path));
                    }
                    if ui.button("Cancel").clicked() {
                        action = Some(Action::DismissSessionPrompt);
                    }
                });
            }
        }
    });
    action
}

/// What a session holds, in a few lines.
fn summary_ui(ui: &mut Ui, session: &SessionFile) {
    ui.group(|ui| {
        if let Some(model) = &session.model {
            ui.label(format!("model: {}", model.path.display()));
        }
        if !session.saes.is_empty() {
            ui.label(format!("{} SAE(s)", session.saes.len()));
        }
        let on = session.interventions.iter().filter(|i| i.enabled).count();
        ui.label(format!(
            "{} intervention(s), {on} enabled",
            session.interventions.len()
        ));
        let prompt: String = session.prompt.chars().take(80).collect();
        ui.label(format!("prompt: “{prompt}”"));
    });
}

/// A native dialog for a session to open (none under tests or without a portal).
fn pick_session() -> Option<std::path::PathBuf> {
    rfd::FileDialog::new()
        .set_title("Open a Dendrite session")
        .add_filter("Dendrite sessions", &[EXTENSION])
        .pick_file()
}

/// A native dialog for where to save the session, named after the model.
fn save_session_as(state: &AppState) -> Option<std::path::PathBuf> {
    let name = state
        .model
        .as_ref()
        .map_or("session".to_string(), |m| m.name.replace([' ', '/'], "-"));
    rfd::FileDialog::new()
        .set_title("Save the session")
        .add_filter("Dendrite sessions", &[EXTENSION])
        .set_file_name(format!("{name}.{EXTENSION}"))
        .save_file()
}
