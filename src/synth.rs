//! Deterministic, realistic synthetic patients as FHIR R4 transaction Bundles.
//!
//! [`patient_bundle`] builds the complete record of one patient: demographics,
//! encounters, problems, allergies, immunizations, labs grouped into diagnostic
//! reports, vital signs, prescriptions, appointments with their slots, portal
//! messages, insurance coverage, a billing account and invoices.
//!
//! Every patient has its own ChaCha8 random stream derived from `(seed, index)`,
//! so bundles are reproducible byte for byte and independent of each other.
//! Resources created for the patient are POSTed and reference each other
//! through deterministic `urn:uuid:` fullUrls. Resources shared between patients
//! (the clinic Organization, insurer Organizations, a pool of
//! [`PRACTITIONER_POOL`] Practitioners and their Schedules) are sent as
//! idempotent `PUT`s with fixed ids and seed-independent content, and only
//! when the bundle references them.
//!
//! Clinical dates fall between 2019 and 2026 and are consistent with each other:
//! whatever is observed during an encounter lies within the encounter period,
//! and the simulation's "now" is 2026-11-01 (booked appointments lie after it,
//! fulfilled ones before).
//!
//! [`availability_bundle`] makes the clinic bookable from the day it is written on: the
//! practitioners' weekly hours turned into free Slots by `$generate-slots`.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use uuid::Builder;

use crate::portal::availability::TIMEZONE_EXTENSION;

/// Number of shared practitioners (`Practitioner/prac-0` … `prac-19`).
pub const PRACTITIONER_POOL: usize = 20;
/// Fixed id of the clinic Organization every bundle references.
pub const CLINIC_ID: &str = "org-hearth-clinic";
/// Identifier system of patient medical record numbers (`MRN-<seed>-<index>`).
pub const MRN_SYSTEM: &str = "http://hearth.example/mrn";

/// The time zone of the clinic (Springfield, Illinois), on its Schedules.
const CLINIC_TIME_ZONE: &str = "America/Chicago";

/// The file of [`availability_bundle`], named to sort after the patients' bundles (an import
/// with `--jobs 1` takes files in path order) so that generated Slots keep clear of theirs.
pub const AVAILABILITY_FILE: &str = "schedule-availability.json";

/// How many days of free Slots [`availability_bundle`] asks for.
pub const AVAILABILITY_DAYS: i64 = 28;

/// What [`write_bundles`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthSummary {
    /// Number of bundle files written.
    pub bundles: usize,
    /// Number of entries over all bundles (shared resources count once per bundle).
    pub resources: usize,
}

/// Minutes per day; instants are minutes since 1970-01-01T00:00Z, dates are day numbers.
const DAY: i64 = 1440;
const START: i64 = days(2019, 1, 1) * DAY;
const NOW: i64 = days(2026, 11, 1) * DAY;
/// Days on which past visits happen (late enough that follow-ups still precede "now").
const PAST: (i64, i64) = (days(2019, 1, 2), days(2026, 9, 28));
/// Days open for booking after "now".
const FUTURE: (i64, i64) = (days(2026, 11, 2), days(2026, 12, 28));

/// Code systems and clinical data tables, one row per line.
#[rustfmt::skip]
mod tables {
    use super::days;

    /// (code, display)
    pub type Code = (&'static str, &'static str);
    pub const SNOMED: &str = "http://snomed.info/sct";
    pub const LOINC: &str = "http://loinc.org";
    pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
    pub const CVX: &str = "http://hl7.org/fhir/sid/cvx";
    pub const UCUM: &str = "http://unitsofmeasure.org";
    pub const CPT: &str = "http://www.ama-assn.org/go/cpt";
    pub const NPI: &str = "http://hl7.org/fhir/sid/us-npi";
    pub const DIABETES: &str = "44054006";
    pub const HYPERTENSION: &str = "38341003";
    pub const LIPIDS: &str = "55822004";
    pub const OBESITY: &str = "414916001";

    pub const FEMALE_NAMES: &[&str] = &[
        "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
        "Karen", "Lisa", "Nancy", "Emily", "Michelle", "Laura", "Olivia", "Sophia", "Emma", "Maria",
        "Sofia", "Mei", "Priya", "Fatima", "Amara", "Yuki", "Chloe", "Grace", "Hannah", "Aisha", "Ruth",
    ];
    pub const MALE_NAMES: &[&str] = &[
        "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
        "Christopher", "Daniel", "Matthew", "Anthony", "Mark", "Steven", "Andrew", "Joshua", "Kevin",
        "Brian", "Ethan", "Luis", "Carlos", "Wei", "Arjun", "Omar", "Kwame", "Hiroshi", "Mateo", "Noah",
        "Samuel",
    ];
    pub const FAMILY_NAMES: &[&str] = &[
        "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
        "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
        "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez",
        "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Nguyen", "Patel", "Kim",
        "Chen", "Okafor",
    ];
    /// (city, state, ZIP prefix, telephone area code)
    pub const CITIES: &[(&str, &str, &str, &str)] = &[
        ("Springfield", "IL", "627", "217"), ("Decatur", "IL", "625", "217"), ("Champaign", "IL", "618", "217"),
        ("Peoria", "IL", "616", "309"), ("Bloomington", "IL", "617", "309"), ("Jacksonville", "IL", "626", "217"),
        ("Lincoln", "IL", "626", "217"), ("Taylorville", "IL", "625", "217"),
    ];
    pub const STREETS: &[&str] = &[
        "Maple", "Oak", "Cedar", "Pine", "Elm", "Washington", "Lake", "Hill", "Park", "Main", "Sunset",
        "River", "Church", "Highland", "Meadow", "Lincoln", "Walnut", "Prairie",
    ];
    pub const STREET_KINDS: &[&str] = &["St", "Ave", "Rd", "Dr", "Ln", "Ct", "Blvd"];
    /// v3-MaritalStatus
    pub const MARITAL: &[Code] = &[("M", "Married"), ("S", "Never Married"), ("D", "Divorced"), ("W", "Widowed")];
    /// Insurers: (Organization id, name)
    pub const PAYERS: &[(&str, &str)] = &[
        ("org-payer-bluestone", "Bluestone Health Plan"),
        ("org-payer-evergreen", "Evergreen Mutual Insurance"),
        ("org-payer-summit", "Summit Care Alliance"),
        ("org-payer-prairie", "Prairie State Health Cooperative"),
    ];
    /// Coverage types (v3-ActCode)
    pub const PLAN_TYPES: &[Code] = &[
        ("HMO", "health maintenance organization policy"),
        ("PPO", "preferred provider organization policy"),
        ("POS", "point of service policy"),
    ];
    pub const EMPLOYERS: &[&str] = &[
        "Lakeside Unified School District", "Riverbend Manufacturing Co.", "Northfield Logistics",
        "Maple Grove Credit Union", "Summit Software LLC", "Sangamon County", "Individual market plan",
    ];
    /// SNOMED CT encounter types
    pub const ENCOUNTER_TYPES: &[Code] = &[
        ("185349003", "Encounter for check up"),
        ("390906007", "Follow-up encounter"),
        ("185345009", "Encounter for symptom"),
    ];
    /// SNOMED CT problems: (code, display, chronic)
    pub const CONDITIONS: &[(&str, &str, bool)] = &[
        (DIABETES, "Diabetes mellitus type 2", true),
        (HYPERTENSION, "Hypertensive disorder, systemic arterial", true),
        ("195967001", "Asthma", true),
        (LIPIDS, "Hyperlipidemia", true),
        (OBESITY, "Obesity", true),
        ("40930008", "Hypothyroidism", true),
        ("35489007", "Depressive disorder", true),
        ("239873007", "Osteoarthritis of knee", true),
        ("444814009", "Viral sinusitis", false),
        ("10509002", "Acute bronchitis", false),
        ("195662009", "Acute viral pharyngitis", false),
    ];
    /// SNOMED CT substances: (code, display, category, criticality, reaction, severity)
    pub type Allergen = (&'static str, &'static str, &'static str, &'static str, Code, &'static str);
    pub const ALLERGENS: &[Allergen] = &[
        ("764146007", "Penicillin", "medication", "high", ("126485001", "Urticaria"), "severe"),
        ("387406002", "Sulfamethoxazole", "medication", "low", ("271807003", "Eruption of skin"), "moderate"),
        ("387458008", "Aspirin", "medication", "low", ("126485001", "Urticaria"), "mild"),
        ("762952008", "Peanut", "food", "high", ("39579001", "Anaphylaxis"), "severe"),
        ("102263004", "Eggs (edible)", "food", "low", ("418290006", "Itching of skin"), "mild"),
        ("3718001", "Cow's milk", "food", "low", ("271807003", "Eruption of skin"), "mild"),
        ("111088007", "Latex", "environment", "high", ("267036007", "Dyspnea"), "moderate"),
        ("256259004", "Pollen", "environment", "low", ("76067001", "Sneezing"), "mild"),
        ("260147004", "House dust mite", "environment", "low", ("76067001", "Sneezing"), "mild"),
        ("264287008", "Animal dander", "environment", "low", ("49727002", "Cough"), "moderate"),
    ];
    /// CVX vaccines: (code, display, first day available, minimum age, maximum age)
    pub type Vaccine = (&'static str, &'static str, i64, i64, i64);
    pub const VACCINES: &[Vaccine] = &[
        ("140", "Influenza, seasonal, injectable, preservative free", 0, 0, 120),
        ("115", "Tdap", 0, 11, 120),
        ("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose", days(2020, 12, 11), 12, 120),
        ("207", "COVID-19, mRNA, LNP-S, PF, 100 mcg/0.5mL dose or 50 mcg/0.25mL dose", days(2020, 12, 18), 18, 120),
        ("08", "Hep B, adolescent or pediatric", 0, 0, 19),
        ("43", "Hep B, adult", 0, 20, 120),
        ("133", "Pneumococcal conjugate PCV 13", 0, 65, 120),
        ("187", "zoster vaccine recombinant", 0, 50, 120),
        ("165", "HPV9", 0, 9, 26),
    ];
    /// Billable service: (CPT code, display, price in USD)
    pub type Service = (&'static str, &'static str, f64);
    pub const VISITS: &[Service] = &[
        ("99213", "Office or other outpatient visit, established patient, low complexity", 135.0),
        ("99214", "Office or other outpatient visit, established patient, moderate complexity", 195.0),
    ];
    /// First and each additional vaccine given at one visit.
    pub const VACCINE_ADMIN: [Service; 2] = [
        ("90471", "Immunization administration, first vaccine", 25.0),
        ("90472", "Immunization administration, each additional vaccine", 15.0),
    ];
    /// Observation categories
    pub const LAB: Code = ("laboratory", "Laboratory");
    pub const VITAL: Code = ("vital-signs", "Vital Signs");
    /// v3-ObservationInterpretation, indexed by how many range bounds the value reaches.
    pub const FLAGS: [Code; 3] = [("L", "Low"), ("N", "Normal"), ("H", "High")];
    /// LOINC lab test: (code, display, UCUM unit, reference low, reference high, decimals,
    /// SNOMED problem that raises it above the range)
    pub type Lab = (&'static str, &'static str, &'static str, f64, f64, i32, &'static str);
    /// LOINC lab panel: (code, display, billed service, tests)
    pub type Panel = (&'static str, &'static str, Service, &'static [Lab]);
    pub const PANELS: &[Panel] = &[
        ("24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma", ("80053", "Comprehensive metabolic panel", 58.0), &[
            ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70.0, 99.0, 0, DIABETES),
            ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6, 1, DIABETES),
            ("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 7.0, 20.0, 0, ""),
            ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 2, ""),
            ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136.0, 145.0, 0, ""),
            ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 1, ""),
            ("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 98.0, 107.0, 0, ""),
            ("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.6, 10.3, 1, ""),
        ]),
        ("58410-2", "CBC panel - Blood by Automated count", ("85025", "Complete blood count with automated differential", 28.0), &[
            ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.5, 11.0, 1, ""),
            ("789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*6/uL", 4.2, 5.9, 2, ""),
            ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 1, ""),
            ("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 36.0, 50.0, 1, ""),
            ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150.0, 400.0, 0, ""),
        ]),
        ("57698-3", "Lipid panel with direct LDL - Serum or Plasma", ("80061", "Lipid panel", 42.0), &[
            ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 125.0, 200.0, 0, LIPIDS),
            ("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 40.0, 150.0, 0, LIPIDS),
            ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 40.0, 60.0, 0, ""),
            ("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay", "mg/dL", 50.0, 100.0, 0, LIPIDS),
        ]),
    ];
    /// LOINC vital signs with a single value: (code, display, UCUM unit, decimals)
    pub const VITAL_SIGNS: [(&str, &str, &str, i32); 5] = [
        ("8302-2", "Body height", "cm", 1),
        ("29463-7", "Body weight", "kg", 1),
        ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 1),
        ("8867-4", "Heart rate", "/min", 0),
        ("8310-5", "Body temperature", "Cel", 1),
    ];
    /// Blood pressure panel, systolic and diastolic components (LOINC)
    pub const BLOOD_PRESSURE: [Code; 3] = [
        ("85354-9", "Blood pressure panel with all children optional"),
        ("8480-6", "Systolic blood pressure"),
        ("8462-4", "Diastolic blood pressure"),
    ];
    /// RxNorm drugs: (code, display, SNOMED problem treated ("" = general), SNOMED allergen
    /// that rules it out, chronic, dosage text, doses per day, days supplied)
    pub type Med = (&'static str, &'static str, &'static str, &'static str, bool, &'static str, u32, u32);
    pub const MEDS: &[Med] = &[
        ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet", DIABETES, "", true, "Take 1 tablet by mouth once daily with the evening meal", 1, 30),
        ("314076", "lisinopril 10 MG Oral Tablet", HYPERTENSION, "", true, "Take 1 tablet by mouth once daily", 1, 30),
        ("197361", "amlodipine 5 MG Oral Tablet", HYPERTENSION, "", true, "Take 1 tablet by mouth once daily", 1, 30),
        ("310798", "hydrochlorothiazide 25 MG Oral Tablet", HYPERTENSION, "", true, "Take 1 tablet by mouth every morning", 1, 30),
        ("259255", "atorvastatin 80 MG Oral Tablet", LIPIDS, "", true, "Take 1 tablet by mouth once daily at bedtime", 1, 30),
        ("312961", "simvastatin 20 MG Oral Tablet", LIPIDS, "", true, "Take 1 tablet by mouth every evening", 1, 30),
        ("745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", "195967001", "", true, "Inhale 2 puffs every 4 to 6 hours as needed for wheezing", 4, 30),
        ("966222", "levothyroxine sodium 0.075 MG Oral Tablet", "40930008", "", true, "Take 1 tablet by mouth every morning on an empty stomach", 1, 30),
        ("312938", "sertraline 100 MG Oral Tablet", "35489007", "", true, "Take 1 tablet by mouth once daily", 1, 30),
        ("308182", "amoxicillin 250 MG Oral Capsule", "444814009", "764146007", false, "Take 2 capsules by mouth every 8 hours for 10 days", 3, 10),
        ("834061", "penicillin V potassium 250 MG Oral Tablet", "195662009", "764146007", false, "Take 1 tablet by mouth 4 times daily for 10 days", 4, 10),
        ("310965", "ibuprofen 200 MG Oral Tablet", "239873007", "", true, "Take 1 to 2 tablets by mouth every 6 hours as needed for pain", 4, 30),
        ("313782", "acetaminophen 325 MG Oral Tablet", "", "", false, "Take 2 tablets by mouth every 6 hours as needed for pain or fever", 4, 10),
        ("243670", "aspirin 81 MG Oral Tablet", "", "387458008", true, "Take 1 tablet by mouth once daily", 1, 30),
    ];
    /// Portal messages: (communication-category code, display, sent by the patient, text)
    pub const MESSAGES: &[(&str, &str, bool, &str)] = &[
        ("notification", "Notification", false, "Your recent lab results are available in the patient portal. We will review them together at your next visit."),
        ("reminder", "Reminder", false, "This is a reminder to schedule your annual wellness visit. Reply to this message or call the clinic to book a time."),
        ("instruction", "Instruction", false, "Please fast for 10 to 12 hours before your next blood draw. Water and your usual medications are fine."),
        ("reminder", "Reminder", false, "Flu vaccines are now available. Walk-in hours are weekdays from 8 am to 4 pm."),
        ("instruction", "Instruction", false, "Please check your blood pressure at home twice a day for two weeks and bring the readings to your follow-up."),
        ("notification", "Notification", true, "Could you please send a refill of my prescription to my usual pharmacy? I have about a week left."),
        ("notification", "Notification", true, "I have had a mild headache since starting the new medication. Is that expected, or should I come in?"),
    ];
    /// Appointment types (v2-0276): (code, display, comment text)
    pub const APPOINTMENT_TYPES: &[(&str, &str, &str)] = &[
        ("ROUTINE", "Routine appointment - default if not valued", "Routine visit"),
        ("FOLLOWUP", "A follow up visit from a previous appointment", "Follow-up visit"),
        ("CHECKUP", "A routine check-up, such as an annual physical", "Annual physical"),
    ];
    /// Weighted draw of an appointment's status.
    pub const APPOINTMENT_STATUS: &[&str] = &["booked", "booked", "fulfilled", "fulfilled", "cancelled"];
}
use tables::*;

/// Builds the transaction Bundle of patient number `index` (0-based) for the given seed.
/// Same (seed, index) → byte-identical bundle.
pub fn patient_bundle(seed: u64, index: usize) -> Value {
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        entries: Vec::new(),
        shared: BTreeSet::new(),
    };
    let p = patient(&mut g, seed, index);
    let mut encs = encounters(&mut g, &p);
    let conds = conditions(&mut g, &p, &encs);
    let allergens = allergies(&mut g, &p, &encs);
    immunizations(&mut g, &p, &mut encs);
    labs(&mut g, &p, &mut encs, &conds);
    vitals(&mut g, &p, &encs, &conds);
    medications(&mut g, &p, &encs, &conds, &allergens);
    appointments(&mut g, &p, &encs);
    communications(&mut g, &p, &encs);
    billing(&mut g, &p, &encs);
    let mut entry: Vec<Value> = g.shared.iter().map(|s| s.entry()).collect();
    entry.append(&mut g.entries);
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entry})
}

/// Writes `patients` bundles as `DIR/patient-00000.json` … and returns how many resources were written in all.
///
/// The directory is created if needed; files hold compact JSON.
pub fn write_bundles(dir: &Path, patients: usize, seed: u64, today: time::Date) -> io::Result<SynthSummary> {
    std::fs::create_dir_all(dir)?;
    let mut resources = 0;
    let mut write = |name: &str, bundle: &Value| {
        resources += bundle["entry"].as_array().map_or(0, Vec::len);
        let bytes = serde_json::to_vec(bundle).map_err(io::Error::other)?;
        std::fs::write(dir.join(name), bytes)
    };
    for index in 0..patients {
        write(&format!("patient-{index:05}.json"), &patient_bundle(seed, index))?;
    }
    write(AVAILABILITY_FILE, &availability_bundle(today))?;
    Ok(SynthSummary { bundles: patients + 1, resources })
}

/// A batch that makes the clinic bookable from `today` on: every practitioner and Schedule of
/// the pool (the same idempotent PUTs as the patients' bundles), then `$generate-slots` of
/// each Schedule for [`AVAILABILITY_DAYS`] days of weekday office hours (08:00–12:00 and
/// 13:00–17:00 in the clinic's time zone, 30-minute routine Slots). Unlike the patients'
/// bundles it depends on the date it is made for; the server runs a batch's entries in order.
pub fn availability_bundle(today: time::Date) -> Value {
    let date = |d: time::Date| format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day());
    let last = today + time::Duration::days(AVAILABILITY_DAYS - 1);
    let mut entries = Vec::new();
    for n in 0..PRACTITIONER_POOL {
        for shared in [Shared::Practitioner(n), Shared::Schedule(n)] {
            entries.push(json!({"fullUrl": shared.url(), "resource": shared.resource(),
                "request": {"method": "PUT", "url": shared.url()}}));
        }
    }
    for n in 0..PRACTITIONER_POOL {
        let parameters = json!({"resourceType": "Parameters", "parameter": [
            {"name": "start", "valueDate": date(today)}, {"name": "end", "valueDate": date(last)},
            {"name": "availability", "valueString": "mon-fri 08:00-12:00"},
            {"name": "availability", "valueString": "mon-fri 13:00-17:00"},
            {"name": "slot-minutes", "valuePositiveInt": 30},
            {"name": "service-type", "valueString": "http://terminology.hl7.org/CodeSystem/service-type|124"},
            {"name": "appointment-type", "valueString": "ROUTINE"}]});
        let url = format!("{}/$generate-slots", Shared::Schedule(n).url());
        entries.push(json!({"resource": parameters, "request": {"method": "POST", "url": url}}));
    }
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
}

/// A resource shared between bundles, sent as an idempotent PUT with a fixed id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Shared {
    Clinic,
    Payer(usize),
    Practitioner(usize),
    Schedule(usize),
}

impl Shared {
    fn url(self) -> String {
        match self {
            Shared::Clinic => format!("Organization/{CLINIC_ID}"),
            Shared::Payer(n) => format!("Organization/{}", PAYERS[n].0),
            Shared::Practitioner(n) => format!("Practitioner/prac-{n}"),
            Shared::Schedule(n) => format!("Schedule/sched-prac-{n}"),
        }
    }

    /// The content depends only on the id, never on the seed, so repeated PUTs agree.
    fn resource(self) -> Value {
        let org_type = tho("organization-type");
        match self {
            Shared::Clinic => json!({"resourceType": "Organization", "id": CLINIC_ID,
                "identifier": [{"system": NPI, "value": npi(999)}], "active": true,
                "type": [cc(&org_type, "prov", "Healthcare Provider")], "name": "Hearth Community Clinic",
                "telecom": [{"system": "phone", "value": "(217) 555-0100", "use": "work"}],
                "address": [{"use": "work", "line": ["100 Hearthstone Way"], "city": "Springfield",
                    "state": "IL", "postalCode": "62701", "country": "US"}]}),
            Shared::Payer(n) => json!({"resourceType": "Organization", "id": PAYERS[n].0,
                "active": true, "type": [cc(&org_type, "pay", "Payer")], "name": PAYERS[n].1}),
            Shared::Practitioner(n) => {
                let (given, family, gender) = practitioner_name(n);
                json!({"resourceType": "Practitioner", "id": format!("prac-{n}"),
                    "identifier": [{"system": NPI, "value": npi(n)}], "active": true,
                    "name": [{"use": "official", "family": family, "given": [given], "prefix": ["Dr."]}],
                    "telecom": [{"system": "phone", "value": format!("(217) 555-01{:02}", n + 10), "use": "work"}],
                    "gender": gender,
                    "qualification": [{"code": cc(&tho("v2-0360|2.7"), "MD", "Doctor of Medicine")}]})
            }
            Shared::Schedule(n) => {
                let (given, family, _) = practitioner_name(n);
                json!({"resourceType": "Schedule", "id": format!("sched-prac-{n}"), "active": true,
                    "serviceCategory": [cc(&tho("service-category"), "17", "General Practice")],
                    "specialty": [cc(SNOMED, "394814009", "General practice")],
                    "actor": [{"reference": Shared::Practitioner(n).url(), "display": format!("Dr. {given} {family}")}],
                    "extension": [{"url": TIMEZONE_EXTENSION, "valueCode": CLINIC_TIME_ZONE}],
                    "planningHorizon": {"start": "2019-01-01T00:00:00Z"},
                    "comment": "Weekday office hours, 30-minute slots"})
            }
        }
    }

    fn entry(self) -> Value {
        let url = self.url();
        // The fullUrl derives from the id alone (FNV-1a), so it is the same in every bundle.
        let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let full_url = urn(ChaCha8Rng::seed_from_u64(hash).random());
        json!({"fullUrl": full_url, "resource": self.resource(), "request": {"method": "PUT", "url": url}})
    }
}

/// Per-bundle generator state: the random stream and the entries built so far.
struct Gen {
    rng: ChaCha8Rng,
    entries: Vec<Value>,
    shared: BTreeSet<Shared>,
}

impl Gen {
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        self.rng.random_range(lo..=hi)
    }
    fn count(&mut self, lo: usize, hi: usize) -> usize {
        self.rng.random_range(lo..=hi)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }
    fn letter(&mut self) -> char {
        char::from(b'A' + self.rng.random_range(0..26u8))
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.rng.random_range(lo..hi)
    }
    /// Approximately normal (Irwin–Hall), using only exactly reproducible arithmetic.
    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let sum: f64 = (0..12).map(|_| self.rng.random::<f64>()).sum();
        mean + sd * (sum - 6.0)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        xs.choose(&mut self.rng).expect("non-empty table")
    }
    /// Up to `n` distinct elements, in random order.
    fn sample<'a, T>(&mut self, xs: &'a [T], n: usize) -> Vec<&'a T> {
        xs.choose_multiple(&mut self.rng, n).collect()
    }
    fn shuffled<T>(&mut self, mut xs: Vec<T>) -> Vec<T> {
        xs.shuffle(&mut self.rng);
        xs
    }
    /// A weekday in the day range (moved past weekends), 08:00–16:30 on the quarter hour.
    fn clinic_time(&mut self, (from, to): (i64, i64)) -> i64 {
        let mut day = self.int(from, to);
        day += [1, 0, 0, 0, 0, 0, 2][(day + 4).rem_euclid(7) as usize]; // Sunday = 0
        day * DAY + self.int(32, 66) * 15
    }
    /// Adds a POSTed entry and returns its fullUrl.
    fn post(&mut self, mut resource: Value) -> String {
        prune(&mut resource);
        let url = urn(self.rng.random());
        let ty = resource["resourceType"].clone();
        let request = json!({"method": "POST", "url": ty});
        let entry = json!({"fullUrl": url, "resource": resource, "request": request});
        self.entries.push(entry);
        url
    }
    /// Includes a shared resource in the bundle and returns its relative reference.
    fn shared(&mut self, s: Shared) -> String {
        if let Shared::Schedule(n) = s {
            self.shared.insert(Shared::Practitioner(n));
        }
        self.shared.insert(s);
        s.url()
    }
    fn practitioner(&mut self, n: usize) -> Value {
        reference(&self.shared(Shared::Practitioner(n)))
    }
}

struct Person {
    url: String,
    name: (&'static str, &'static str),
    female: bool,
    birth_day: i64,
    gp: usize,
}

impl Person {
    fn age_at(&self, t: i64) -> i64 {
        (t / DAY - self.birth_day) * 100 / 36_525
    }
}

struct Enc {
    url: String,
    entry: usize,
    start: i64,
    end: i64,
    prac: usize,
    /// Services billed for this visit besides the visit itself.
    services: Vec<Service>,
}

impl Enc {
    /// A moment during the encounter.
    fn at(&self, g: &mut Gen) -> i64 {
        self.start + g.int(5, self.end - self.start - 5)
    }
}

struct Cond {
    code: &'static str,
    url: String,
    enc: usize,
}

fn has(conds: &[Cond], code: &str) -> bool {
    conds.iter().any(|c| c.code == code)
}

fn patient(g: &mut Gen, seed: u64, index: usize) -> Person {
    let female = g.chance(0.5);
    let names = if female { FEMALE_NAMES } else { MALE_NAMES };
    let (given, middle, family) = (*g.pick(names), *g.pick(names), *g.pick(FAMILY_NAMES));
    let birth_day = g.int(days(1940, 1, 1), days(2003, 12, 31));
    let gp = g.count(0, PRACTITIONER_POOL - 1);
    let &(city, state, zip, area) = g.pick(CITIES);
    let (number, street, kind) = (g.int(12, 9870), g.pick(STREETS), g.pick(STREET_KINDS));
    let mut line = vec![format!("{number} {street} {kind}")];
    if g.chance(0.2) {
        line.push(format!("Apt {}", g.int(1, 40)));
    }
    let marital = *g.pick(MARITAL);
    let resource = json!({"resourceType": "Patient",
        "identifier": [{"use": "usual", "type": cc(&tho("v2-0203"), "MR", "Medical record number"),
            "system": MRN_SYSTEM, "value": format!("MRN-{seed}-{index}")}],
        "active": true,
        "name": [{"use": "official", "family": family,
            "given": if g.chance(0.5) && middle != given { vec![given, middle] } else { vec![given] }}],
        "telecom": [
            {"system": "phone", "value": format!("({area}) 555-01{:02}", g.int(0, 99)), "use": "mobile"},
            {"system": "email", "value": format!("{}.{}{}@example.com", given.to_lowercase(),
                family.to_lowercase(), g.int(1, 99)), "use": "home"}],
        "gender": if female { "female" } else { "male" },
        "birthDate": date(birth_day * DAY),
        "address": [{"use": "home", "type": "physical", "line": line, "city": city, "state": state,
            "postalCode": format!("{zip}{:02}", g.int(1, 99)), "country": "US"}],
        "maritalStatus": cc(&tho("v3-MaritalStatus"), marital.0, marital.1),
        "communication": [{"language": cc("urn:ietf:bcp:47", "en-US", "English (United States)"), "preferred": true}],
        "generalPractitioner": [g.practitioner(gp)],
        "managingOrganization": reference(&g.shared(Shared::Clinic))});
    let url = g.post(resource);
    let name = (given, family);
    Person { url, name, female, birth_day, gp }
}

fn encounters(g: &mut Gen, p: &Person) -> Vec<Enc> {
    let n = g.count(2, 5);
    let mut starts: Vec<i64> = (0..n).map(|_| g.clinic_time(PAST)).collect();
    starts.sort_unstable();
    let mut out = Vec::new();
    for start in starts {
        let end = start + g.int(2, 5) * 15;
        let covering = g.count(0, PRACTITIONER_POOL - 1);
        let prac = if g.chance(0.75) { p.gp } else { covering };
        let period = json!({"start": datetime(start), "end": datetime(end)});
        let kind = *g.pick(ENCOUNTER_TYPES);
        let resource = json!({"resourceType": "Encounter", "status": "finished",
            "class": coding(&tho("v3-ActCode"), "AMB", "ambulatory"),
            "type": [cc(SNOMED, kind.0, kind.1)],
            "subject": reference(&p.url),
            "participant": [{"type": [cc(&tho("v3-ParticipationType"), "PPRF", "primary performer")],
                "period": period, "individual": g.practitioner(prac)}],
            "period": period,
            "serviceProvider": reference(&g.shared(Shared::Clinic))});
        let (entry, url, services) = (g.entries.len(), g.post(resource), Vec::new());
        out.push(Enc { url, entry, start, end, prac, services });
    }
    out
}

fn conditions(g: &mut Gen, p: &Person, encs: &[Enc]) -> Vec<Cond> {
    let n = g.count(1, 4);
    let mut out = Vec::new();
    for &(code, display, chronic) in g.sample(CONDITIONS, n) {
        let enc = g.count(0, encs.len() - 1);
        let e = &encs[enc];
        let recorded = e.at(g);
        // Chronic problems began up to three years earlier, acute ones a few days before the visit.
        let max_back = ((e.start - START) / DAY).min(if chronic { 1095 } else { 6 });
        let onset = e.start - DAY * g.int(0, max_back);
        let abatement = (!chronic).then(|| datetime(e.end + DAY * g.int(7, 21)));
        let resource = json!({"resourceType": "Condition",
            "clinicalStatus": if chronic { cc(&tho("condition-clinical"), "active", "Active") }
                else { cc(&tho("condition-clinical"), "resolved", "Resolved") },
            "verificationStatus": cc(&tho("condition-ver-status"), "confirmed", "Confirmed"),
            "category": [cc(&tho("condition-category"), "problem-list-item", "Problem List Item")],
            "code": cc(SNOMED, code, display),
            "subject": reference(&p.url), "encounter": reference(&e.url),
            "onsetDateTime": datetime(onset), "abatementDateTime": abatement,
            "recordedDate": datetime(recorded), "recorder": g.practitioner(e.prac)});
        let url = g.post(resource);
        out.push(Cond { code, url, enc });
    }
    out
}

fn allergies(g: &mut Gen, p: &Person, encs: &[Enc]) -> Vec<&'static str> {
    let n = g.count(0, 3);
    let mut out = Vec::new();
    for &(code, display, category, criticality, reaction, severity) in g.sample(ALLERGENS, n) {
        let e = g.pick(encs);
        let resource = json!({"resourceType": "AllergyIntolerance",
            "clinicalStatus": cc(&tho("allergyintolerance-clinical"), "active", "Active"),
            "verificationStatus": cc(&tho("allergyintolerance-verification"), "confirmed", "Confirmed"),
            "type": "allergy", "category": [category], "criticality": criticality,
            "code": cc(SNOMED, code, display),
            "patient": reference(&p.url), "encounter": reference(&e.url),
            "recordedDate": datetime(e.at(g)), "recorder": g.practitioner(e.prac),
            "reaction": [{"manifestation": [cc(SNOMED, reaction.0, reaction.1)], "severity": severity}]});
        g.post(resource);
        out.push(code);
    }
    out
}

fn immunizations(g: &mut Gen, p: &Person, encs: &mut [Enc]) {
    let wanted = g.count(2, 5);
    let mut families: Vec<&str> = Vec::new();
    for &(code, display, available, min_age, max_age) in g.sample(VACCINES, VACCINES.len()) {
        // At most one vaccine per family ("COVID-19", "Hep B", …: the text before the first comma).
        let family = display.split(',').next().unwrap_or(display);
        if families.contains(&family) {
            continue;
        }
        let fits = |t: i64| t >= available * DAY && (min_age..=max_age).contains(&p.age_at(t));
        let eligible: Vec<usize> = (0..encs.len()).filter(|&k| fits(encs[k].start)).collect();
        let Some(&k) = eligible.choose(&mut g.rng) else {
            continue;
        };
        let at = encs[k].at(g);
        let arm = *g.pick(&[("LA", "left arm"), ("RA", "right arm")]);
        let lot = format!("{}{}{:04}", g.letter(), g.letter(), g.int(0, 9999));
        let resource = json!({"resourceType": "Immunization", "status": "completed",
            "vaccineCode": cc(CVX, code, display),
            "patient": reference(&p.url), "encounter": reference(&encs[k].url),
            "occurrenceDateTime": datetime(at), "recorded": datetime(at), "primarySource": true,
            "lotNumber": lot, "site": cc(&tho("v3-ActSite"), arm.0, arm.1),
            "route": cc(&tho("v3-RouteOfAdministration"), "IM", "Injection, intramuscular"),
            "doseQuantity": quantity(0.5, "mL"),
            "performer": [{"function": cc(&tho("v2-0443"), "AP", "Administering Provider"),
                "actor": g.practitioner(encs[k].prac)}]});
        g.post(resource);
        let services = &mut encs[k].services;
        let additional = services.iter().any(|s| s.0 == VACCINE_ADMIN[0].0);
        services.push(VACCINE_ADMIN[usize::from(additional)]);
        families.push(family);
        if families.len() == wanted {
            break;
        }
    }
}

/// An Observation made during encounter `e` at `(effective, issued)`, plus the members of `value`.
fn observation(p: &Person, e: &Enc, cat: Code, code: Code, at: (i64, i64), value: Value) -> Value {
    let mut obs = json!({"resourceType": "Observation", "status": "final",
        "category": [cc(&tho("observation-category"), cat.0, cat.1)],
        "code": cc(LOINC, code.0, code.1),
        "subject": reference(&p.url), "encounter": reference(&e.url),
        "effectiveDateTime": datetime(at.0), "issued": datetime(at.1)});
    if let (Some(obs), Value::Object(value)) = (obs.as_object_mut(), value) {
        obs.extend(value);
    }
    obs
}

fn labs(g: &mut Gen, p: &Person, encs: &mut [Enc], conds: &[Cond]) {
    let n = g.count(1, 3);
    for &(code, display, service, tests) in g.sample(PANELS, n) {
        let k = g.count(0, encs.len() - 1);
        let e = &encs[k];
        let at = e.at(g);
        let issued = at + g.int(4 * 60, 30 * 60);
        let mut results = Vec::new();
        for &(loinc, name, unit, low, high, decimals, raised_by) in tests {
            let value = if has(conds, raised_by) {
                high * g.uniform(1.1, 1.6)
            } else {
                g.normal((low + high) / 2.0, (high - low) / 4.0).max(low * 0.6)
            };
            let value = round(value, decimals);
            let flag = FLAGS[usize::from(value >= low) + usize::from(value > high)];
            let extra = json!({"valueQuantity": quantity(value, unit),
                "interpretation": [cc(&tho("v3-ObservationInterpretation"), flag.0, flag.1)],
                "referenceRange": [{"low": quantity(low, unit), "high": quantity(high, unit)}]});
            let obs = observation(p, e, LAB, (loinc, name), (at, issued), extra);
            results.push(reference(&g.post(obs)));
        }
        let resource = json!({"resourceType": "DiagnosticReport", "status": "final",
            "category": [cc(&tho("v2-0074"), "LAB", "Laboratory")],
            "code": cc(LOINC, code, display),
            "subject": reference(&p.url), "encounter": reference(&e.url),
            "effectiveDateTime": datetime(at), "issued": datetime(issued),
            "performer": [reference(&g.shared(Shared::Clinic))],
            "resultsInterpreter": [g.practitioner(e.prac)], "result": results});
        g.post(resource);
        encs[k].services.push(service);
    }
}

fn vitals(g: &mut Gen, p: &Person, encs: &[Enc], conds: &[Cond]) {
    let height = g.normal(if p.female { 163.0 } else { 176.0 }, 7.0);
    let m2 = (height / 100.0) * (height / 100.0);
    let bmi = g.uniform(20.0, 29.0) + if has(conds, OBESITY) { 8.0 } else { 0.0 };
    let hypertensive = if has(conds, HYPERTENSION) { 1.0 } else { 0.0 };
    for e in encs {
        let at = e.start + g.int(3, 10);
        let weight = round(bmi * m2 + g.normal(0.0, 1.5), 1);
        let (pulse, temperature) = (g.normal(72.0, 8.0), g.normal(36.8, 0.25));
        let values = [height, weight, weight / m2, pulse, temperature];
        for (&(code, display, unit, decimals), value) in VITAL_SIGNS.iter().zip(values) {
            let value = json!({"valueQuantity": quantity(round(value, decimals), unit)});
            let obs = observation(p, e, VITAL, (code, display), (at, at), value);
            g.post(obs);
        }
        let systolic = round(g.normal(118.0 + 24.0 * hypertensive, 8.0), 0);
        let diastolic = round(g.normal(76.0 + 14.0 * hypertensive, 6.0), 0);
        let [panel, sys, dia] = BLOOD_PRESSURE;
        let components = json!({"component": [
            {"code": cc(LOINC, sys.0, sys.1), "valueQuantity": quantity(systolic, "mm[Hg]")},
            {"code": cc(LOINC, dia.0, dia.1), "valueQuantity": quantity(diastolic, "mm[Hg]")}]});
        let obs = observation(p, e, VITAL, panel, (at, at), components);
        g.post(obs);
    }
}

fn medications(g: &mut Gen, p: &Person, encs: &[Enc], conds: &[Cond], allergens: &[&str]) {
    let usable = |m: &&Med| !allergens.contains(&m.3);
    let treating = MEDS.iter().filter(|m| usable(m) && has(conds, m.2));
    let general = MEDS.iter().filter(|m| usable(m) && m.2.is_empty());
    // Drugs for the patient's own problems first, then general ones.
    let mut picked = g.shuffled(treating.collect());
    picked.extend(g.shuffled(general.collect()));
    picked.truncate(g.count(1, 4));
    for &(code, display, treats, _, chronic, text, per_day, supply) in picked {
        let cond = conds.iter().find(|c| c.code == treats);
        let e = match cond {
            Some(c) => &encs[c.enc],
            None => g.pick(encs),
        };
        let repeats = if chronic { g.int(2, 11) } else { 0 };
        let resource = json!({"resourceType": "MedicationRequest",
            "status": if chronic { "active" } else { "completed" }, "intent": "order",
            "medicationCodeableConcept": cc(RXNORM, code, display),
            "subject": reference(&p.url), "encounter": reference(&e.url),
            "authoredOn": datetime(e.at(g)), "requester": g.practitioner(e.prac),
            "reasonReference": cond.map(|c| json!([reference(&c.url)])),
            "dosageInstruction": [{"sequence": 1, "text": text,
                "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
                "asNeededBoolean": text.contains("as needed").then_some(true)}],
            "dispenseRequest": {"numberOfRepeatsAllowed": repeats,
                "expectedSupplyDuration": {"value": supply, "unit": "days", "system": UCUM, "code": "d"}}});
        g.post(resource);
    }
}

/// Posts a 30-minute Slot on the practitioner's schedule and returns its fullUrl.
fn slot(g: &mut Gen, prac: usize, start: i64, busy: bool, kind: &(&str, &str, &str)) -> String {
    let resource = json!({"resourceType": "Slot",
        "serviceCategory": [cc(&tho("service-category"), "17", "General Practice")],
        "appointmentType": cc(&tho("v2-0276"), kind.0, kind.1),
        "schedule": reference(&g.shared(Shared::Schedule(prac))),
        "status": if busy { "busy" } else { "free" },
        "start": datetime(start), "end": datetime(start + 30)});
    g.post(resource)
}

fn appointments(g: &mut Gen, p: &Person, encs: &[Enc]) {
    for i in 0..g.count(1, 3) {
        let drawn = *g.pick(APPOINTMENT_STATUS);
        // A fulfilled appointment is the one that led to a past encounter (latest first).
        let past = encs.len().checked_sub(i + 1).map(|k| &encs[k]);
        let enc = past.filter(|_| drawn == "fulfilled");
        let status = match (drawn, enc) {
            ("fulfilled", None) => "booked",
            _ => drawn,
        };
        let (start, prac) = match enc {
            Some(e) => (e.start, e.prac),
            None if status == "cancelled" && g.chance(0.5) => (g.clinic_time(PAST), p.gp),
            None => (g.clinic_time(FUTURE), p.gp),
        };
        let kind = g.pick(APPOINTMENT_TYPES);
        let slot_url = slot(g, prac, start, status != "cancelled", kind);
        // Made 2 to 60 days ahead, and never after "now".
        let latest = start.min(NOW) / DAY - 1;
        let earliest = (latest - 60).max(START / DAY);
        let created = g.clinic_time((earliest, (latest - 2).max(earliest)));
        let resource = json!({"resourceType": "Appointment", "status": status,
            "cancelationReason": (status == "cancelled")
                .then(|| cc(&tho("appointment-cancellation-reason"), "pat", "Patient")),
            "serviceCategory": [cc(&tho("service-category"), "17", "General Practice")],
            "appointmentType": cc(&tho("v2-0276"), kind.0, kind.1),
            "comment": format!("{} with Dr. {}", kind.2, practitioner_name(prac).1),
            "start": datetime(start), "end": datetime(start + 30), "minutesDuration": 30,
            "slot": [reference(&slot_url)], "created": datetime(created),
            "participant": [
                {"actor": reference(&p.url), "required": "required", "status": "accepted"},
                {"actor": g.practitioner(prac), "required": "required", "status": "accepted"}]});
        let url = g.post(resource);
        if let Some(e) = enc {
            g.entries[e.entry]["resource"]["appointment"] = json!([reference(&url)]);
        }
    }
    for _ in 0..g.count(2, 4) {
        let start = g.clinic_time(FUTURE);
        let kind = g.pick(APPOINTMENT_TYPES);
        slot(g, p.gp, start, false, kind);
    }
}

fn communications(g: &mut Gen, p: &Person, encs: &[Enc]) {
    let n = g.count(1, 4);
    for &(code, display, from_patient, text) in g.sample(MESSAGES, n) {
        let e = g.pick(encs);
        let sent = e.end + g.int(60, 3 * DAY);
        let (patient, clinician) = (reference(&p.url), g.practitioner(p.gp));
        let (sender, recipient) = match from_patient {
            true => (patient, clinician),
            false => (clinician, patient),
        };
        let resource = json!({"resourceType": "Communication", "status": "completed",
            "category": [cc(&tho("communication-category"), code, display)],
            "subject": reference(&p.url), "encounter": reference(&e.url),
            "sent": datetime(sent), "received": datetime(sent + g.int(1, 90)),
            "recipient": [recipient], "sender": sender, "payload": [{"contentString": text}]});
        g.post(resource);
    }
}

fn billing(g: &mut Gen, p: &Person, encs: &[Enc]) {
    let payer = g.count(0, PAYERS.len() - 1);
    let (plan, employer) = (*g.pick(PLAN_TYPES), *g.pick(EMPLOYERS));
    let (y, m, _) = civil((encs[0].start / DAY - g.int(0, 400)).max(START / DAY));
    let since = format!("{y:04}-{m:02}-01");
    let member = format!("{}{:09}", &PAYERS[payer].1[..1], g.int(0, 999_999_999));
    let group = format!("GRP-{:05}", g.int(100, 99_999));
    let plan_id = format!("{}-{}", plan.0, g.int(100, 999));
    let coverage = json!({"resourceType": "Coverage",
        "identifier": [{"system": "http://hearth.example/member-id", "value": member}],
        "status": "active", "type": cc(&tho("v3-ActCode"), plan.0, plan.1),
        "subscriber": reference(&p.url), "subscriberId": member, "beneficiary": reference(&p.url),
        "relationship": cc(&tho("subscriber-relationship"), "self", "Self"),
        "period": {"start": since}, "payor": [reference(&g.shared(Shared::Payer(payer)))],
        "class": [
            {"type": cc(&tho("coverage-class"), "group", "Group"), "value": group, "name": employer},
            {"type": cc(&tho("coverage-class"), "plan", "Plan"), "value": plan_id,
                "name": format!("{} {}", PAYERS[payer].1, plan.0)}]});
    let coverage = g.post(coverage);
    let account = json!({"resourceType": "Account", "status": "active",
        "type": cc(&tho("v3-ActCode"), "PBILLACCT", "patient billing account"),
        "name": format!("{} {} billing account", p.name.0, p.name.1),
        "subject": [reference(&p.url)], "servicePeriod": {"start": since},
        "coverage": [{"coverage": reference(&coverage), "priority": 1}],
        "owner": reference(&g.shared(Shared::Clinic)),
        "guarantor": [{"party": reference(&p.url), "onHold": false}]});
    let account = g.post(account);
    let n = g.count(1, 3);
    for e in g.sample(encs, n) {
        let mut items = vec![*g.pick(VISITS)];
        items.extend_from_slice(&e.services);
        let total: f64 = items.iter().map(|s| s.2).sum();
        let date = e.end + DAY * g.int(1, 5);
        let resource = json!({"resourceType": "Invoice",
            "status": if date < NOW - 90 * DAY { "balanced" } else { "issued" },
            "subject": reference(&p.url), "recipient": reference(&p.url), "date": datetime(date),
            "issuer": reference(&g.shared(Shared::Clinic)), "account": reference(&account),
            "lineItem": items.iter().zip(1..).map(line_item).collect::<Vec<_>>(),
            "totalNet": money(total), "totalGross": money(total),
            "paymentTerms": "Payment due within 30 days of the invoice date."});
        g.post(resource);
    }
}

fn line_item((&(code, display, price), sequence): (&Service, usize)) -> Value {
    json!({"sequence": sequence, "chargeItemCodeableConcept": cc(CPT, code, display),
        "priceComponent": [{"type": "base", "amount": money(price)}]})
}

/// (given, family, gender) of shared practitioner `n`.
fn practitioner_name(n: usize) -> (&'static str, &'static str, &'static str) {
    let names = [FEMALE_NAMES, MALE_NAMES][n % 2];
    let family = FAMILY_NAMES[(n * 13 + 7) % FAMILY_NAMES.len()];
    let given = names[(n * 7 + 2) % names.len()];
    (given, family, ["female", "male"][n % 2])
}

/// A 10-digit NPI with a valid Luhn check digit (computed with the "80840" prefix).
fn npi(n: usize) -> String {
    let base = 123_450_000 + n as u64 * 1_117;
    let (mut sum, mut rest) = (24, base); // 24: the prefix's contribution
    for i in 0..9 {
        let d = (rest % 10) * (2 - i % 2);
        sum += d / 10 + d % 10;
        rest /= 10;
    }
    format!("{base}{}", (10 - sum % 10) % 10)
}

fn urn(bytes: [u8; 16]) -> String {
    let id = Builder::from_random_bytes(bytes).into_uuid();
    format!("urn:uuid:{id}")
}

/// A code system URL under terminology.hl7.org.
fn tho(name: &str) -> String {
    format!("http://terminology.hl7.org/CodeSystem/{name}")
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

fn cc(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [coding(system, code, display)], "text": display})
}

fn reference(url: &str) -> Value {
    json!({"reference": url})
}

fn quantity(value: f64, ucum: &str) -> Value {
    json!({"value": value, "unit": ucum, "system": UCUM, "code": ucum})
}

fn money(value: f64) -> Value {
    json!({"value": value, "currency": "USD"})
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// Removes `null` members (optional elements left out) recursively.
fn prune(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, x| !x.is_null());
            map.values_mut().for_each(prune);
        }
        Value::Array(items) => items.iter_mut().for_each(prune),
        _ => {}
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (years > 0).
const fn days(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let (era, yoe) = (y / 400, y % 400);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// (year, month, day) of a day number counted from 1970-01-01.
fn civil(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, doy - (153 * mp + 2) / 5 + 1)
}

fn date(t: i64) -> String {
    let (y, m, d) = civil(t.div_euclid(DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

fn datetime(t: i64) -> String {
    let minute = t.rem_euclid(DAY);
    format!("{}T{:02}:{:02}:00Z", date(t), minute / 60, minute % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// Every (key, value) member of every object inside `v`.
    fn members<'a>(v: &'a Value, out: &mut Vec<(&'a str, &'a Value)>) {
        match v {
            Value::Object(map) => map.iter().for_each(|(k, x)| {
                out.push((k.as_str(), x));
                members(x, out);
            }),
            Value::Array(items) => items.iter().for_each(|x| members(x, out)),
            _ => {}
        }
    }

    fn entries(bundle: &Value) -> &Vec<Value> {
        bundle["entry"].as_array().unwrap()
    }

    #[test]
    fn deterministic_per_seed_and_index() {
        for index in [0, 1, 17] {
            let json = |b: Value| serde_json::to_string(&b).unwrap();
            assert_eq!(json(patient_bundle(42, index)), json(patient_bundle(42, index)));
        }
        assert_ne!(patient_bundle(42, 0), patient_bundle(42, 1));
        assert_ne!(patient_bundle(42, 0), patient_bundle(43, 0));
    }

    #[test]
    fn references_resolve_within_bundle() {
        let fixed = ["Practitioner/prac-", "Schedule/sched-prac-", "Organization/org-"];
        for index in 0..40 {
            let bundle = patient_bundle(7, index);
            let mut targets = HashSet::new();
            for e in entries(&bundle) {
                let (request, resource) = (&e["request"], &e["resource"]);
                let (full_url, url) = (e["fullUrl"].as_str().unwrap(), &request["url"]);
                assert!(full_url.starts_with("urn:uuid:") && full_url.len() == 45);
                targets.insert(full_url.to_owned());
                if request["method"] == "PUT" {
                    let (ty, id) = (resource["resourceType"].as_str(), resource["id"].as_str());
                    let id = format!("{}/{}", ty.unwrap(), id.unwrap());
                    assert_eq!(url, &json!(id));
                    assert!(fixed.iter().any(|f| id.starts_with(f)), "{id}");
                    targets.insert(id);
                } else {
                    assert_eq!(request["method"], "POST");
                    assert!(resource.get("id").is_none() && resource["resourceType"] == *url);
                }
            }
            let mut all = Vec::new();
            members(&bundle, &mut all);
            for (_, r) in all.into_iter().filter(|(k, _)| *k == "reference") {
                let r = r.as_str().unwrap();
                assert!(targets.contains(r), "patient {index}: dangling {r}");
            }
        }
    }

    #[test]
    fn every_resource_type_present() {
        let types = "Organization Practitioner Schedule Patient Encounter Condition Immunization \
            Observation DiagnosticReport MedicationRequest Appointment Slot Communication \
            Coverage Account Invoice";
        let mut with_allergies = 0;
        for index in 0..60 {
            let bundle = patient_bundle(11, index);
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for e in entries(&bundle) {
                *counts.entry(e["resource"]["resourceType"].as_str().unwrap()).or_default() += 1;
            }
            for ty in types.split_whitespace() {
                assert!(counts.contains_key(ty), "patient {index} has no {ty}");
            }
            let count = |ty: &str| counts.get(ty).copied().unwrap_or(0);
            assert_eq!(count("Patient"), 1);
            assert!((2..=5).contains(&count("Encounter")), "{counts:?}");
            assert!((1..=3).contains(&count("DiagnosticReport")), "{counts:?}");
            assert!((2..=5).contains(&count("Immunization")), "{counts:?}");
            assert!(count("AllergyIntolerance") <= 3, "{counts:?}");
            with_allergies += usize::from(count("AllergyIntolerance") > 0);
        }
        assert!(with_allergies > 20);
    }

    #[test]
    fn no_empty_values_and_consistent_dates() {
        let now = datetime(NOW);
        for index in 0..40 {
            let bundle = patient_bundle(3, index);
            let mut all = Vec::new();
            members(&bundle, &mut all);
            for (key, value) in all {
                match value {
                    Value::String(s) if s.len() > 10 && s.as_bytes()[10] == b'T' => {
                        assert!(s.ends_with(":00Z") && s.len() == 20, "{key}: {s}");
                        assert!(("2019".."2027").contains(&&s[..4]), "{key}: {s}");
                    }
                    Value::String(s) => assert!(!s.trim().is_empty(), "{key} is empty"),
                    Value::Array(a) => assert!(!a.is_empty(), "{key} is an empty array"),
                    Value::Object(o) => assert!(!o.is_empty(), "{key} is an empty object"),
                    Value::Null => panic!("{key} is null"),
                    _ => {}
                }
            }
            let mut periods = HashMap::new();
            for e in entries(&bundle).iter().filter(|e| e["resource"]["resourceType"] == "Encounter") {
                periods.insert(e["fullUrl"].to_string(), &e["resource"]["period"]);
            }
            for r in entries(&bundle).iter().map(|e| &e["resource"]) {
                let encounter = periods.get(&r["encounter"]["reference"].to_string());
                let times = ["effectiveDateTime", "occurrenceDateTime", "recordedDate", "authoredOn"];
                let at = times.iter().find_map(|k| r[k].as_str());
                if let (Some(period), Some(at)) = (encounter, at) {
                    let (start, end) = (period["start"].as_str().unwrap(), period["end"].as_str().unwrap());
                    assert!(start <= at && at <= end, "{at} outside {start}..{end}");
                }
                let start = r["start"].as_str().unwrap_or_default();
                if r["resourceType"] == "Appointment" && r["status"] == "booked" {
                    assert!(start > now.as_str());
                } else if r["resourceType"] == "Appointment" && r["status"] == "fulfilled" {
                    assert!(start < now.as_str());
                }
            }
        }
    }

    #[test]
    fn calendar_and_identifiers() {
        assert_eq!(datetime(days(2024, 2, 29) * DAY + 570), "2024-02-29T09:30:00Z");
        for day in days(1940, 1, 1)..days(2027, 1, 1) {
            let (y, m, d) = civil(day);
            assert_eq!(days(y, m, d), day);
        }
        let npis: HashSet<String> = (0..PRACTITIONER_POOL).map(npi).collect();
        assert_eq!(npis.len(), PRACTITIONER_POOL);
    }

    #[test]
    fn write_bundles_writes_files_and_counts() {
        let dir = std::env::temp_dir().join(format!("hearth-synth-{}", std::process::id()));
        let today = time::macros::date!(2027 - 01 - 04);
        let summary = write_bundles(&dir, 4, 99, today).unwrap();
        let mut resources = 0;
        for index in 0..4 {
            let text = std::fs::read(dir.join(format!("patient-{index:05}.json"))).unwrap();
            let bundle: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(bundle, patient_bundle(99, index));
            resources += entries(&bundle).len();
        }
        let availability: Value = serde_json::from_slice(&std::fs::read(dir.join(AVAILABILITY_FILE)).unwrap()).unwrap();
        assert_eq!(availability, availability_bundle(today));
        resources += entries(&availability).len();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 5);
        assert_eq!(summary, SynthSummary { bundles: 5, resources });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
