package ai.meki.app;

import ai.meki.runtime.GenerationStats;
import ai.meki.runtime.Generator;
import ai.meki.runtime.Sampler;
import android.app.Activity;
import android.os.Bundle;
import android.widget.Button;
import android.widget.EditText;
import android.widget.LinearLayout;
import android.widget.ScrollView;
import android.widget.TextView;

/** A minimal chat screen over the bundle in the APK's assets: prompt in, streamed tokens out. */
public final class ChatActivity extends Activity {
    private Session session;
    private TextView log;

    @Override
    protected void onCreate(Bundle saved) {
        super.onCreate(saved);
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        EditText input = new EditText(this);
        input.setHint("ids:1,2,3");
        Button send = new Button(this);
        send.setText("Send");
        log = new TextView(this);
        ScrollView scroll = new ScrollView(this);
        scroll.addView(log);
        root.addView(input);
        root.addView(send);
        root.addView(scroll);
        setContentView(root);
        // anonymous classes, not lambdas: Debian's dx (scripts/debian_apk.sh) cannot desugar lambdas
        send.setOnClickListener(new android.view.View.OnClickListener() {
            @Override
            public void onClick(android.view.View v) {
                final String prompt = input.getText().toString();
                send.setEnabled(false);
                new Thread(new Runnable() {
                    @Override
                    public void run() {
                        chat(prompt, send);
                    }
                }, "meki-chat").start();
            }
        });
    }

    private void chat(String prompt, Button send) {
        try {
            if (session == null) session = new Session(this, "assets", "executorch-xnnpack", new Sampler(0.7f, 0));
            append("\n> " + prompt + "\n");
            int[] eos = session.bundle.manifest.tokenizer == null ? null : session.bundle.manifest.tokenizer.eosTokenIds;
            GenerationStats s = session.generator.generate(Session.parsePrompt(prompt), 128, eos,
                    new Generator.TokenListener() {
                        @Override
                        public boolean onToken(int t) {
                            append(t + " ");
                            return true;
                        }
                    });
            append(String.format("\n[%.1f tok/s, ttft %.0f ms]\n", s.decodeTokS(), 1000 * s.ttftS));
        } catch (Exception e) {
            append("\nerror: " + e.getMessage() + "\n");
        }
        runOnUiThread(new Runnable() {
            @Override
            public void run() {
                send.setEnabled(true);
            }
        });
    }

    private void append(String text) {
        runOnUiThread(new Runnable() {
            @Override
            public void run() {
                log.append(text);
            }
        });
    }

    @Override
    protected void onDestroy() {
        super.onDestroy();
        try {
            if (session != null) session.close();
        } catch (java.io.IOException ignored) {
            // closing a read-only mapping and a program: nothing to recover
        }
    }
}
