//! The pipeline's stages one at a time, for the Criterion `stages` bench
//! (`cargo bench --features bench-internals --bench stages`), so that a regression
//! shows in the stage that made it. Not part of the API: hidden, behind a feature,
//! and free to change.

use std::sync::Arc;

use crate::error::Result;
use crate::mailer::Mailer;
use crate::render::{self, Rendered};
use crate::templates::TemplateSet;

/// One template of a mailer's set, looked up once.
pub struct Stages {
    mailer: Mailer,
    set: Arc<TemplateSet>,
    name: String,
}

impl Stages {
    /// The stages of template `name` (its base locale).
    pub fn new(mailer: &Mailer, name: &str) -> Result<Stages> {
        let set = mailer.set();
        set.variant(name, None)?;
        Ok(Stages {
            mailer: mailer.clone(),
            set,
            name: name.to_string(),
        })
    }

    /// Checks `data` against the template's schema.
    pub fn validate(&self, data: &serde_json::Value) -> Result<()> {
        match &self.set.variant(&self.name, None)?.schema {
            Some(schema) => schema.check(&self.name, data),
            None => Ok(()),
        }
    }

    /// Renders the HTML body with minijinja, before CSS inlining.
    pub fn render(&self, data: &serde_json::Value) -> Result<String> {
        let variant = self.set.variant(&self.name, None)?;
        let ctx = minijinja::Value::from_serialize(data);
        render::render_body(&self.set, &variant.html, &ctx)
    }

    /// Inlines the set's CSS into a rendered body.
    pub fn inline(&self, html: &str) -> Result<String> {
        let variant = self.set.variant(&self.name, None)?;
        self.set.stylesheets.inline(html, &variant.file)
    }

    /// Inlines, and makes the text part as templates without a `.txt` have it made.
    pub fn inline_and_text(&self, html: &str) -> Result<(String, Option<String>)> {
        let variant = self.set.variant(&self.name, None)?;
        self.set
            .stylesheets
            .inline_and_text(html, &variant.file, true)
    }

    /// Every stage at once, as `send` runs them before MIME.
    pub fn rendered(&self, data: &serde_json::Value) -> Result<Rendered> {
        render::render(
            &self.set,
            &self.name,
            None,
            &std::sync::Arc::new(data.clone()),
            &Default::default(),
        )
    }

    /// Builds the MIME message of a rendered template.
    pub fn mime(&self, rendered: Rendered) -> Result<Vec<u8>> {
        let email = crate::message::build(
            rendered,
            &[],
            Some(self.mailer.default_from()),
            &crate::message::MessageId::Random,
        )?;
        Ok(email.into_raw())
    }
}
