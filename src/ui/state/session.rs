//! A session as a file holds it (`.dendrite`): the work in the window written down. The model
//! (its path and fingerprint, to tell a changed file), the attached SAEs, the corpus stores,
//! the prompt, every intervention with its enabled flag in its order, the selections, the open
//! tab and the view modes, the sparsity method and the generation settings. JSON with a
//! version number, so a newer Dendrite can still read an older file and an older one says
//! clearly that it cannot read a newer one.
//!
//! [`AppState::session`] writes the state down and [`AppState::adopt_session`] takes it back
//! once the model has loaded and the session's SAEs are attached (the app drives that: it
//! opens the model, attaches, then adopts). Both are pure; `crate::ui::session` does the file
//! work.

use std::path::PathBuf;

use super::{
    Action, AppState, Effect, FigureFormat, GenerateColour, GenerateSettings, InterventionItem,
    PatchSettings, Selection, SetAside, Show, Tab, TokenColour,
};
use crate::analysis::sparsity::Method;
use crate::model::BosMode;
use crate::worker::{ErrorEvent, Request, SaeId};

/// The schema version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Session files' extension.
pub const EXTENSION: &str = "dendrite";
/// A model or SAE as a session names it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileRef {
    pub path: PathBuf,
    /// Size and hash of the first MiB when the session was saved
    /// ([`crate::describe::corpus::model_fingerprint`]); `None` if it could not be read.
    pub fingerprint: Option<String>,
}

/// An attached SAE. Interventions and selections name it by `id`, its place in attach order.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedSae {
    pub id: SaeId,
    #[serde(flatten)]
    pub file: FileRef,
    /// The hook it was attached at (files with several SAEs, such as Gemma Scope's, name one).
    pub hook: String,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionFile {
    /// The schema version ([`FORMAT_VERSION`]).
    pub dendrite_session: u32,
    pub model: Option<FileRef>,
    /// In attach order.
    #[serde(default)]
    pub saes: Vec<SavedSae>,
    /// Corpus stores open for the model.
    #[serde(default)]
    pub stores: Vec<PathBuf>,
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub bos: BosMode,
    /// As `dendrite sparsity --method` takes it: `zero`, `eps:0.1`, `cett:0.2`, …
    pub sparsity: String,
    /// In order, enabled or not.
    #[serde(default)]
    pub interventions: Vec<InterventionItem>,
    #[serde(default)]
    pub selection: Selection,
    #[serde(default)]
    pub selected_sae: Option<SaeId>,
    pub tab: Tab,
    pub show: Show,
    pub token_colour: TokenColour,
    #[serde(default)]
    pub sort_neurons: bool,
    #[serde(default)]
    pub generate: GenerateSettings,
    pub generate_colour: GenerateColour,
    /// Which figure files exports write.
    #[serde(default)]
    pub figure_format: FigureFormat,
    /// The patching tab's corrupted prompt, tokens, site and direction.
    #[serde(default)]
    pub patching: PatchSettings,
    /// The sweeps tab's text, pruning method, levels, methods and PPL-p%.
    #[serde(default)]
    pub sweeps: super::SweepSettings,
    /// The prompt the core neurons are compared with.
    #[serde(default)]
    pub core_compare: String,
    /// Zoom and pan of the heatmaps that have them, by name: `[first visible column, visible
    /// columns]` (the window's, which the app adds: the state does not hold them).
    #[serde(default)]
    pub zoom: std::collections::BTreeMap<String, [f32; 2]>,
}

/// A question about a session the window asks before going on.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionPrompt {
    /// The session's model file is not where it was saved: locate it, or cancel.
    ModelMissing {
        session: Box<SessionFile>,
        missing: PathBuf,
    },
    /// A process that died (a crash, `kill -9`) left this session behind: restore it?
    Recover {
        /// Its recovery file.
        file: PathBuf,
        session: Box<SessionFile>,
        /// When it was last written, for the question ("12 min ago").
        age: String,
    },
}

impl AppState {
    /// The session as a file would hold it. SAEs are numbered by attach order, so equal
    /// pictures give equal files whatever ids the worker handed out.
    pub fn session(&self) -> SessionFile {
        let saved_id = |live: SaeId| -> Option<SaeId> {
            self.saes
                .iter()
                .position(|s| s.id == live)
                .map(|i| i as SaeId)
        };
        let mut interventions = Vec::with_capacity(self.interventions.items.len());
        for item in &self.interventions.items {
            let mut item = item.clone();
            if let Some(live) = item.sae_id() {
                // An SAE's interventions go with it when it is detached, so this always maps.
                let Some(id) = saved_id(live) else { continue };
                item.spec.set_sae_id(id);
            }
            interventions.push(item);
        }
        // Set-aside interventions stay in the file, under their SAE (kept after the attached
        // ones' ids).
        let mut saes: Vec<SavedSae> = self
            .saes
            .iter()
            .enumerate()
            .map(|(i, s)| SavedSae {
                id: i as SaeId,
                file: FileRef {
                    path: s.cfg.path.clone(),
                    fingerprint: s.fingerprint.clone(),
                },
                hook: s.cfg.hook_name.clone(),
            })
            .collect();
        for aside in &self.interventions.set_aside {
            let id = saes.len() as SaeId;
            saes.push(SavedSae {
                id,
                ..aside.sae.clone()
            });
            for item in &aside.interventions {
                let mut item = item.clone();
                item.spec.set_sae_id(id);
                interventions.push(item);
            }
        }
        let mut selection = self.selection.clone();
        selection.latent = selection
            .latent
            .and_then(|(live, latent)| Some((saved_id(live)?, latent)));
        SessionFile {
            dendrite_session: FORMAT_VERSION,
            model: self.model.as_ref().map(|m| FileRef {
                path: m.path.clone(),
                fingerprint: self.model_fingerprint.clone(),
            }),
            saes,
            stores: self.stores.open.iter().map(|s| s.path.clone()).collect(),
            prompt: self.prompt.clone(),
            bos: self.bos,
            sparsity: self.sparsity.to_string(),
            interventions,
            selection,
            selected_sae: self.selected_sae.and_then(saved_id),
            tab: self.tab,
            show: self.show,
            token_colour: self.token_colour,
            sort_neurons: self.sort_neurons,
            generate: self.generate_settings.clone(),
            generate_colour: self.generate_colour,
            figure_format: self.figure_format,
            patching: self.patching.settings.clone(),
            sweeps: self.sweeps.settings.clone(),
            core_compare: self.core_compare.text.clone(),
            zoom: Default::default(),
        }
    }

    /// Takes back a saved session once its model is open and its SAEs are attached (those
    /// that could be): SAEs are matched by path and hook, and interventions of one that is not
    /// attached are set aside (see [`SetAside`]), never dropped. Returns the commands that
    /// bring the picture back (the selected unit's details, the run), and says in `errors`
    /// what differs from the saved session (a changed model or SAE file, a missing SAE).
    pub fn adopt_session(&mut self, file: &SessionFile) -> Vec<Effect> {
        let mut problems = Vec::new();
        if let (Some(saved), Some(model)) = (&file.model, &self.model)
            && let (Some(then), Some(now)) = (&saved.fingerprint, &self.model_fingerprint)
            && then != now
        {
            problems.push(format!(
                "{} has changed since the session was saved (size and header {then} → {now}): \
                 its numbers may differ from the session's",
                model.path.display()
            ));
        }
        // Saved id → live id, for each SAE attached from the same file at the same hook.
        let mut live_of = std::collections::BTreeMap::new();
        let mut claimed = Vec::new();
        let mut set_aside = Vec::new();
        for saved in &file.saes {
            let found = self.saes.iter().find(|s| {
                s.cfg.path == saved.file.path
                    && s.cfg.hook_name == saved.hook
                    && !claimed.contains(&s.id)
            });
            match found {
                Some(entry) => {
                    claimed.push(entry.id);
                    live_of.insert(saved.id, entry.id);
                    if let (Some(then), Some(now)) = (&saved.file.fingerprint, &entry.fingerprint)
                        && then != now
                    {
                        problems.push(format!(
                            "the SAE {} has changed since the session was saved: its latents \
                             may not be the session's",
                            saved.file.path.display()
                        ));
                    }
                }
                None => {
                    // The worker's answer to the attach says why (a missing file, a bad one).
                    let reason = self
                        .errors
                        .iter()
                        .rev()
                        .find(|e| e.request == Request::AttachSae(saved.file.path.clone()))
                        .map_or("it was not attached".into(), |e| e.message.clone());
                    set_aside.push(SetAside {
                        sae: saved.clone(),
                        reason,
                        interventions: Vec::new(),
                    })
                }
            }
        }
        let mut items = Vec::new();
        for item in &file.interventions {
            let mut item = item.clone();
            match item.sae_id() {
                None => items.push(item),
                Some(saved) => match live_of.get(&saved) {
                    Some(&live) => {
                        item.spec.set_sae_id(live);
                        items.push(item);
                    }
                    None => match set_aside.iter_mut().find(|a| a.sae.id == saved) {
                        Some(aside) => aside.interventions.push(item),
                        None => problems.push(format!(
                            "an intervention names SAE #{saved}, which the session does not \
                             list: it was left out ({})",
                            item.label()
                        )),
                    },
                },
            }
        }
        for aside in &set_aside {
            problems.push(format!(
                "the session's SAE {} @ {} is not attached: {}. Its {} intervention(s) are kept \
                 aside; locate the SAE to restore them",
                aside.sae.file.path.display(),
                aside.sae.hook,
                aside.reason,
                aside.interventions.len()
            ));
        }
        self.interventions.adopt(items, set_aside);
        self.prompt = file.prompt.clone();
        self.bos = file.bos;
        match file.sparsity.parse::<Method>() {
            Ok(m) => self.sparsity = m,
            Err(e) => problems.push(format!("the session's sparsity method: {e}")),
        }
        self.tab = file.tab;
        self.show = file.show;
        self.sort_neurons = file.sort_neurons;
        self.generate_settings = file.generate.clone();
        self.generate_colour = file.generate_colour;
        self.figure_format = file.figure_format;
        self.patching.settings = file.patching.clone();
        self.sweeps.settings = file.sweeps.clone();
        self.core_compare.text = file.core_compare.clone();
        let n_layers = self.n_layers();
        let mut effects = Vec::new();
        self.selection = Selection {
            layer: file.selection.layer.min(n_layers.saturating_sub(1)),
            neuron: None,
            head: file.selection.head,
            latent: None,
        };
        if let Some(neuron) = file.selection.neuron {
            effects.extend(self.act(Action::SelectNeuron {
                layer: self.selection.layer,
                neuron,
            }));
        }
        if let Some((saved, latent)) = file.selection.latent
            && let Some(&sae_id) = live_of.get(&saved)
        {
            effects.extend(self.act(Action::SelectLatent { sae_id, latent }));
        }
        self.selected_sae = file
            .selected_sae
            .and_then(|saved| live_of.get(&saved).copied())
            .or(self.selected_sae);
        // Selecting units sets the token colouring; the session's own wins.
        self.token_colour = file.token_colour;
        for message in problems {
            self.errors.push(ErrorEvent {
                request: Request::Window,
                context: "restoring the session".into(),
                message,
            });
        }
        effects.extend(self.act(Action::Run));
        effects
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ui::state::tests::{loaded, sae_cfg};
    use crate::ui::state::{EditSpec, command};
    use crate::worker::{Command, Event, SaeAttached};

    fn attach(s: &mut AppState, sae_id: SaeId, path: &str, fingerprint: &str) {
        let mut cfg = sae_cfg();
        cfg.path = path.into();
        s.apply(Event::SaeAttached(SaeAttached {
            sae_id,
            cfg,
            source: format!("sae:{path}"),
            fingerprint: Some(fingerprint.into()),
        }));
    }

    fn latent(sae_id: SaeId, latent: usize) -> EditSpec {
        EditSpec::Latent {
            sae_id,
            latent,
            value: 3.0,
            scale: false,
            positions: Some(vec![1]),
        }
    }

    /// A session built up by hand: two SAEs (worker ids 7 and 9), a neuron clamp, a disabled
    /// steer, a latent clamp on the second SAE, a selected latent, another tab and method.
    pub(crate) fn built() -> AppState {
        let mut s = loaded();
        s.model_fingerprint = Some("100-abc".into());
        attach(&mut s, 7, "/saes/a", "1-a");
        attach(&mut s, 9, "/saes/b", "2-b");
        s.act(Action::SetPrompt("one two one two".into()));
        s.act(Action::AddIntervention(EditSpec::Neuron {
            layer: 1,
            neuron: 0,
            value: 5.0,
            scale: false,
        }));
        s.act(Action::AddIntervention(EditSpec::Steer {
            layer: 0,
            neuron: 1,
            scale: -2.0,
        }));
        s.act(Action::ToggleIntervention(1));
        s.act(Action::AddIntervention(latent(9, 5)));
        s.act(Action::SelectLatent {
            sae_id: 9,
            latent: 5,
        });
        s.act(Action::SetTab(Tab::Features));
        s.act(Action::SetShow(Show::Difference));
        s.act(Action::SetSparsity(Method::Cett { target: 0.2 }));
        s.act(Action::SetFigureFormat(FigureFormat::Svg));
        s
    }

    /// The same model and SAEs opened again, the worker handing out other ids.
    fn reopened(second_sae: bool) -> AppState {
        let mut s = loaded();
        s.model_fingerprint = Some("100-abc".into());
        attach(&mut s, 3, "/saes/a", "1-a");
        if second_sae {
            attach(&mut s, 4, "/saes/b", "2-b");
        }
        s
    }

    #[test]
    fn a_saved_session_reopens_as_the_same_state_whatever_ids_the_saes_get() {
        let original = built();
        let file = original.session();
        assert_eq!(file.saes.iter().map(|s| s.id).collect::<Vec<_>>(), [0, 1]);
        let json = serde_json::to_vec_pretty(&file).unwrap();
        let read: SessionFile = serde_json::from_slice(&json).unwrap();
        assert_eq!(read, file);

        let mut s = reopened(true);
        let commands: Vec<Command> = s
            .adopt_session(&read)
            .into_iter()
            .filter_map(|e| match e {
                Effect::Worker(c) => Some(c),
                _ => None,
            })
            .collect();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.session(), file);
        // The latent clamp and the selection point at the SAE's new id.
        assert_eq!(s.interventions.items[2].spec, latent(4, 5));
        assert_eq!(s.selection.latent, Some((4, 5)));
        assert!(!s.interventions.items[1].enabled);
        assert_eq!(s.sparsity, Method::Cett { target: 0.2 });
        assert_eq!((s.tab, s.show), (Tab::Features, Show::Difference));
        assert_eq!(s.figure_format, FigureFormat::Svg);
        // The latent's details, then the run with the session's edits.
        assert!(matches!(commands[0], Command::InspectLatent(_)));
        match commands.last() {
            Some(Command::Run(run)) => {
                assert_eq!(run.text, "one two one two");
                assert_eq!(run.interventions.len(), 2, "the disabled steer is not sent");
            }
            other => panic!("expected the run last, got {other:?}"),
        }
    }

    #[test]
    fn interventions_of_a_missing_sae_are_kept_aside_and_come_back_when_it_is_located() {
        let file = built().session();
        let mut s = reopened(false);
        s.apply(Event::Error(ErrorEvent {
            request: Request::AttachSae("/saes/b".into()),
            context: "attaching the SAE /saes/b".into(),
            message: "No such file or directory".into(),
        }));
        s.adopt_session(&file);
        assert_eq!(s.interventions.items.len(), 2);
        assert_eq!(s.interventions.set_aside.len(), 1);
        assert_eq!(
            s.interventions.set_aside[0].reason,
            "No such file or directory"
        );
        assert_eq!(s.interventions.set_aside[0].interventions.len(), 1);
        assert_eq!(s.selection.latent, None);
        assert!(
            s.errors
                .iter()
                .any(|e| e.message.contains("/saes/b") && e.message.contains("kept aside")),
            "{:?}",
            s.errors
        );
        // Nothing is dropped: saved again, the session is the one it came from.
        assert_eq!(s.session().interventions, file.interventions);
        // The user locates the SAE: it attaches as #11 and the clamp is back on it.
        let locate = s.act(Action::LocateSae {
            index: 0,
            path: "/elsewhere/b".into(),
        });
        assert!(matches!(command(locate), Some(Command::AttachSae(_))));
        let mut cfg = sae_cfg();
        cfg.path = "/elsewhere/b".into();
        let rerun = s.apply(Event::SaeAttached(SaeAttached {
            sae_id: 11,
            cfg,
            source: "sae:/elsewhere/b".into(),
            fingerprint: Some("2-b".into()),
        }));
        assert!(matches!(command(rerun), Some(Command::Run(_))));
        assert!(s.interventions.set_aside.is_empty());
        assert_eq!(s.interventions.items[2].spec, latent(11, 5));
        // One undo step takes the restored clamp back off.
        s.act(Action::Undo);
        assert_eq!(s.interventions.items.len(), 2);
    }

    #[test]
    fn a_changed_model_or_sae_is_named() {
        let file = built().session();
        let mut s = reopened(true);
        s.model_fingerprint = Some("100-def".into());
        s.saes[1].fingerprint = Some("2-c".into());
        s.adopt_session(&file);
        let messages: Vec<&str> = s.errors.iter().map(|e| e.message.as_str()).collect();
        assert!(
            messages.iter().any(|m| m.contains("/m has changed")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("/saes/b has changed")),
            "{messages:?}"
        );
        // The session still comes back whole.
        assert_eq!(s.interventions.items.len(), 3);
    }
}
