//! Snapshots of every template × example × locale of the repository's set: any change to
//! what a recipient sees shows up in review.

use crate::common;

use missive::Mailer;

#[test]
fn example_set_renders_as_reviewed() {
    let (mailer, _) = Mailer::for_tests(common::repo().0);
    let mut count = 0;
    for name in mailer.template_names() {
        for locale in [None, Some("fr")] {
            let mut index = 0;
            while let Ok(data) = mailer.example(&name, index) {
                let mut message = mailer.template(&name).data(&data);
                if let Some(locale) = locale {
                    message = message.locale(locale);
                }
                let rendered = message.render().unwrap_or_else(|e| panic!("{name}: {e}"));
                if locale.is_some() && rendered.locale().is_none() {
                    break;
                }
                let snapshot = format!(
                    "subject: {}\nfrom: {:?}\nto: {:?}\ncc: {:?}\nbcc: {:?}\nreply_to: {:?}\nheaders: {:?}\ntags: {:?}\n\n--- text ---\n{}\n--- html ---\n{}\n",
                    rendered.subject(),
                    rendered.from(),
                    rendered.to(),
                    rendered.cc(),
                    rendered.bcc(),
                    rendered.reply_to(),
                    rendered.headers(),
                    rendered.tags(),
                    rendered.text().unwrap_or("(none)"),
                    rendered.html(),
                );
                let id = format!(
                    "{}{}-{index}",
                    name.replace('/', "_"),
                    locale.map(|l| format!(".{l}")).unwrap_or_default()
                );
                insta::assert_snapshot!(id, snapshot);
                count += 1;
                index += 1;
            }
        }
    }
    assert!(count >= 17, "only {count} renders");
}
